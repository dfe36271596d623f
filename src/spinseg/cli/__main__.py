"""``python -m spinseg.cli <command> [flags]`` = ``spinseg <command> [flags]``."""
import sys

from spinseg.cli.main import main

sys.exit(main())
