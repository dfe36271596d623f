"""`python -m spinseg.compare`: kept where the README documents it; the command lives in `spinseg.cli.compare`."""
from spinseg.cli.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
