"""`python -m spinseg.score`: kept where the README documents it; the command lives in `spinseg.cli.score`."""
from spinseg.cli.score import main

if __name__ == "__main__":
    raise SystemExit(main())
