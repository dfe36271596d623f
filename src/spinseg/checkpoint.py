"""Public checkpoint API (``spinseg.checkpoint.load_model`` / ``save_checkpoint`` / ``read_checkpoint``):
the same module object as ``spinseg.models.checkpoint``, where it lives."""
import sys

from spinseg.models import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint
