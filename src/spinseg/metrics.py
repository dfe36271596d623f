"""Public metrics API (``spinseg.metrics.*``): the same module object as ``spinseg.evaluation.metrics``,
where it lives."""
import sys

from spinseg.evaluation import metrics as _metrics

sys.modules[__name__] = _metrics
