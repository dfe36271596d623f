"""User-facing errors and the command-line wrapper that turns them into one line and exit code 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserInputError(Exception):
    """A mistake in what the user gave us (a file, a flag, a data set), reported as one line.

    The message should name the offending file or flag and the problem, e.g.
    ``"data/atlas/c0001/...nii.gz: mask shape (10, 10, 10) != scan shape (12, 10, 10)"``.
    """


def fail(path, problem: str) -> UserInputError:
    """Builds a :class:`UserInputError` whose message is ``"<path>: <problem>"``."""
    return UserInputError(f"{path}: {problem}")


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorates a command-line ``main`` so a :class:`UserInputError` prints one line and exits 2.

    Any other exception is a bug in this package and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            status = main(*args, **kwargs)
        except UserInputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        return 0 if status is None else int(status)

    return wrapped


def warn(message: str) -> None:
    """One warning line on stderr (kept apart from the progress bar's output)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
