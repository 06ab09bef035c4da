"""carla_mr: generative-AI-augmented vehicular mixed-reality simulation for CARLA.

Implements Xu et al., "Generative AI-Empowered Simulation for Autonomous Driving in
Vehicular Mixed Reality Metaverses" (IEEE JSTSP 2023). Importing the package has no side
effects and pulls in no heavy dependency; every stage lives in its own subpackage.
"""

__version__ = "0.1.0"

from carla_mr.errors import CarlaMrError, InputError, RunError  # noqa: E402,F401
