"""Clean traffic-sign faces for the generator: the world's one sign painter, re-exported.

The drawing code and the palette live in :mod:`carla_mr.world.sign_art` (the renderer draws
with the same painter); the class names in :mod:`carla_mr.config.vocab`.
"""

from carla_mr.config.vocab import SIGN_CLASSES, SIGN_WORDS
from carla_mr.world.sign_art import composite, sign_class_id, sign_face

__all__ = ["SIGN_CLASSES", "SIGN_WORDS", "composite", "sign_class_id", "sign_face"]
