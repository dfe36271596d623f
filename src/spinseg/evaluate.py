"""`python -m spinseg.evaluate`: kept where the README documents it; the command lives in `spinseg.cli.evaluate`."""
from spinseg.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
