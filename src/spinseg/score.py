"""`python -m spinseg.score` and ``spinseg.score.*``: the same module as ``spinseg.evaluation.scoring``, where it lives."""
import sys

from spinseg.evaluation import scoring as _scoring

if __name__ == "__main__":
    raise SystemExit(_scoring.main())
sys.modules[__name__] = _scoring
