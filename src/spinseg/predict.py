"""`python -m spinseg.predict`: kept where the README documents it; the command lives in `spinseg.cli.predict`."""
from spinseg.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
