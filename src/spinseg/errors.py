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


def missing(path, what: str, hint: str = "", suffixes: tuple[str, ...] = ()) -> UserInputError:
    """``"<path>: <what> not found <hint>"``; when ``path`` is a folder (a run folder given as a checkpoint),
    ``"<path>: is a folder, not a <what> file"`` naming up to three files in it or one level down that end
    in one of ``suffixes``, since "not found" would be wrong for a path that exists."""
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        return fail(path, f"{what} not found{' ' + hint if hint else ''}")
    found = sorted(str(item.relative_to(path)) for pattern in ("*", "*/*") for item in path.glob(pattern)
                   if suffixes and item.is_file() and item.name.endswith(tuple(suffixes)))
    shown = f" (it holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''})" if found else ""
    return fail(path, f"is a folder, not a {what} file{shown}")


@functools.lru_cache(maxsize=1)
def skip_final_garbage_collection() -> None:
    """Makes the interpreter's exit skip its last full garbage collection (registered once per process).

    At exit Python walks every object still alive; with torch imported that is over a million and
    takes ~0.3 s of every command on a 2-core CPU. ``gc.freeze()`` from an exit handler (these run
    before that collection) moves them all out of its reach; nothing is left to be used by then.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorates a command-line ``main`` so a :class:`UserInputError` prints one line and exits 2.

    Any other exception is a bug in this package and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        skip_final_garbage_collection()
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
