"""`python -m spinseg.export`: kept where the README documents it; the command lives in `spinseg.cli.export`."""
from spinseg.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
