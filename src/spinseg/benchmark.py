"""`python -m spinseg.benchmark`: kept where the README documents it; the command lives in `spinseg.cli.benchmark`."""
from spinseg.cli.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
