"""Test doubles: the in-process CARLA stand-in server and the shared fake world.

- :mod:`carla_mr.testing.carla_standin`: ``StandinServer``, a fake CARLA server (built on the
  real ``carla`` wheel where it works offline) with fault injection, for the CARLA backend's
  tests;
- :mod:`carla_mr.testing.fake_world`: ``FakeWorld`` (snapshots from a script) and
  ``KinematicWorld`` (vehicles following a ``carla.Map``'s lanes, with the embedded camera),
  for tests and benchmarks that need a world without SUMO.

Product code never imports this package (``tests/test_layers.py`` checks it).
"""
