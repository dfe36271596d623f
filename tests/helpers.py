"""Kept only so that tests written before ``tests/conftest.py`` still import; new tests import from conftest."""
from conftest import (  # noqa: F401
    SMALL_SPIN_CONFIG,
    assert_finite_gradients,
    count_parameters,
    documented_parameter_count,
    write_volume_set,
)
