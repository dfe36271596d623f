"""Public boundary-metrics API (``spinseg.boundary_metrics.*``): the same module object as
``spinseg.evaluation.boundary_metrics``, where it lives."""
import sys

from spinseg.evaluation import boundary_metrics as _boundary_metrics

sys.modules[__name__] = _boundary_metrics
