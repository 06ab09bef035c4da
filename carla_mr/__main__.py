from carla_mr.cli import main

main()
