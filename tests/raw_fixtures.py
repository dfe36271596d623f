"""Kept only so that tests written before ``tests/conftest.py`` still import; new tests import from conftest."""
from conftest import GLAS_IMAGES, RITE_IMAGES, RITE_SHAPE, write_glas_tree, write_rite_tree  # noqa: F401
