"""Build the optional C fast path of the embedded world (everything else is in pyproject.toml).

``carla_mr.world._sumo_columns`` converts libsumo's subscription results into a Snapshot's
columns and RSU indices in one pass. It is optional: where no C compiler is found the install
still succeeds and the embedded world uses its numpy path (the same values, bitwise; slower).
"""

import sys

from setuptools import Extension, setup

# no fused multiply-add: the C path must give the numpy path's values bit for bit
FLAGS = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("carla_mr.world._sumo_columns", ["carla_mr/world/_sumo_columns.c"],
                             extra_compile_args=FLAGS, optional=True)])
