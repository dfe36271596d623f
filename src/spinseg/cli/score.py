"""``spinseg score``: scoring any masks lives in :mod:`spinseg.evaluation.scoring`."""
from spinseg.evaluation.scoring import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
