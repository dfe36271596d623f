"""`python -m spinseg.download`: kept where the README documents it; the command lives in `spinseg.cli.download`."""
from spinseg.cli.download import main

if __name__ == "__main__":
    raise SystemExit(main())
