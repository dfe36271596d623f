"""`python -m spinseg.train`: kept where the README documents it; the command lives in `spinseg.cli.train`."""
from spinseg.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
