"""Command-line entry points: argparse plus one call each; ``spinseg <command>`` dispatches to them."""
from spinseg.cli.main import main

__all__ = ["main"]
