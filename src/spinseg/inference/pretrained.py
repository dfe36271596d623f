"""Install the authors' pretrained models: ``python -m spinseg.download [--zip_path ZIP] [--output_dir pretrained_models]``.

Without ``--zip_path`` the release zip is fetched from Google Drive with ``gdown`` (optional:
``pip install gdown``). The host is probed first with a short socket timeout, so that offline the
command fails within seconds with the manual link. With ``--zip_path`` a zip downloaded by hand
is installed instead.

Installing is all-or-nothing: the zip is extracted into a temporary folder beside the output
folder, checked, and only then are its files moved into ``--output_dir`` one by one; every file
there that the release does not bring (your own checkpoints, notes) is kept, and a file the release
would replace stops the run unless ``--force``, which moves it aside (``<name>.before-download-<time>``)
with a note. What is checked:

* the expected files exist: ``spin/spin_atlas_traintest.pth`` and ``u-net/unet_atlas_traintest.pth``
  (the zip may hold them at its top level or inside one folder, e.g. ``pretrained_models/``);
* each loads with :func:`spinseg.checkpoint.load_model` (``torch.load(weights_only=True)``: no
  code runs; every key and tensor shape must match the network). The network is built with the
  paper's config unless ``--check_config NAME=JSON`` gives another one (as the tests do with a
  small model); ``--skip_load_check`` checks only that the files exist;
* any other ``.pth`` in the zip is only read safely; one that cannot be read is left out with a
  warning, and one that would run code stops the install (nothing is installed).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath

from spinseg.errors import UserInputError, fail

GOOGLE_DRIVE_FILE_ID = "1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_"
MANUAL_LINK = f"https://drive.google.com/file/d/{GOOGLE_DRIVE_FILE_ID}/view"
DEFAULT_HOST = "drive.google.com:443"
# Tests (and users behind an odd network) can point the probe elsewhere, e.g. "127.0.0.1:9".
PROBE_HOST_VARIABLE = "SPINSEG_DOWNLOAD_PROBE_HOST"
# model registry name -> path inside pretrained_models/
EXPECTED_FILES = {
    "spin": "spin/spin_atlas_traintest.pth",
    "unet": "u-net/unet_atlas_traintest.pth",
}
DEFAULT_OUTPUT_DIR = "pretrained_models"


def manual_instructions(output_dir: Path) -> str:
    """The one-line fallback: where to download by hand and how to install it."""
    return (f"download the zip by hand from {MANUAL_LINK} and run `python -m spinseg.download --zip_path <zip>` "
            f"(or unzip it so that {output_dir / EXPECTED_FILES['spin']} exists)")


def probe_connection(host_and_port: str, timeout_s: float) -> str | None:
    """Tries a TCP connection to ``host:port`` within ``timeout_s`` (name lookup included).

    Returns None when it connects, else the reason. The lookup runs in a daemon thread because
    ``getaddrinfo`` ignores socket timeouts and can hang for long without a resolver.
    """
    host, _, port = host_and_port.rpartition(":")
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                outcome.append(None)
        except (OSError, ValueError) as error:
            outcome.append(f"{type(error).__name__}: {error}".strip()[:120])

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    if not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


def download_zip(destination: Path, output_dir: Path, probe_timeout_s: float) -> Path:
    """Fetches the release zip to ``destination`` with gdown; offline fails fast with the manual link."""
    host = os.environ.get(PROBE_HOST_VARIABLE, DEFAULT_HOST)
    reason = probe_connection(host, probe_timeout_s)
    if reason is not None:
        raise UserInputError(f"{host}: cannot connect ({reason}); {manual_instructions(output_dir)}")
    try:
        import gdown
    except ImportError:
        raise UserInputError(f"gdown is not installed: pip install gdown; or {manual_instructions(output_dir)}") from None
    try:
        result = gdown.download(id=GOOGLE_DRIVE_FILE_ID, output=str(destination), quiet=False)
    except Exception as error:  # gdown raises many kinds (requests, its own FileURLRetrievalError...)
        raise UserInputError(f"{MANUAL_LINK}: download failed ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}); "
                             f"{manual_instructions(output_dir)}") from None
    if not result or not destination.is_file():
        raise UserInputError(f"{MANUAL_LINK}: download failed; {manual_instructions(output_dir)}")
    return destination


def safe_extract(zip_path: Path, target: Path) -> None:
    """Extracts ``zip_path`` into ``target``, refusing members that would land outside it."""
    if not zip_path.is_file():
        raise fail(zip_path, "zip file not found")
    if not zipfile.is_zipfile(zip_path):
        raise fail(zip_path, "not a zip file")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            claimed = sum(member.file_size for member in archive.infolist())
            free = shutil.disk_usage(target).free
            if claimed > free:
                raise fail(zip_path, f"its files need {claimed / 2**20:.0f} MiB, only {free / 2**20:.0f} MiB free beside the output folder")
            for member in archive.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise fail(zip_path, f"refused: member {member.filename!r} would be written outside the folder")
            archive.extractall(target)
    except UserInputError:
        raise
    except Exception as error:  # noqa: BLE001 - zlib.error, BadZipFile, CRC errors... are the zip's fault
        raise fail(zip_path, f"cannot extract ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]})") from None


def find_release_root(extracted: Path) -> Path | None:
    """The folder inside ``extracted`` that holds ``spin/``/``u-net/`` (the zip's top level or one or two folders down)."""
    candidates = [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir() and p.name != "__MACOSX")
    candidates += sorted(q for p in candidates[1:] for q in p.iterdir() if q.is_dir())
    for candidate in candidates:
        if any((candidate / relative).is_file() for relative in EXPECTED_FILES.values()):
            return candidate
    return None


def parse_check_configs(items: list[str]) -> dict[str, dict]:
    """``--check_config NAME=JSON`` (JSON object or file) -> {name: model config}."""
    from spinseg.models.model_config import check_model_config, parse_model_config

    configs = {}
    for item in items:
        name, separator, text = item.partition("=")
        if not separator or name not in EXPECTED_FILES:
            raise UserInputError(f"--check_config {item[:80]!r}: expected NAME=JSON with NAME one of {', '.join(EXPECTED_FILES)}")
        configs[name] = parse_model_config(text, f"--check_config {name}=")
        check_model_config(name, configs[name])
    return configs


def check_release(root: Path, zip_label: str, check_configs: dict[str, dict], load_check: bool) -> list[str]:
    """Checks the extracted release under ``root``; returns lines describing what was checked.

    Missing expected files or a file that does not load raise a one-line ``UserInputError``.
    """
    missing = [relative for relative in EXPECTED_FILES.values() if not (root / relative).is_file()]
    if missing:
        raise fail(zip_label, f"missing expected file(s): {', '.join(missing)}")
    lines = []
    if load_check:
        from spinseg.models.checkpoint import load_model, read_checkpoint

        for name, relative in EXPECTED_FILES.items():
            config = check_configs.get(name, {})
            try:
                model = load_model(root / relative, name, **config)
            except UserInputError as error:
                # The message names the temporary copy; name the file inside the zip instead.
                raise fail(f"{zip_label}:{relative}", str(error).split(": ", 1)[-1]) from None
            parameters = sum(parameter.numel() for parameter in model.parameters())
            source = "--check_config" if name in check_configs else "the paper's"
            lines.append(f"{relative}: loads safely as {name!r} with {source} config ({parameters:,} parameters)")
        expected = {root / relative for relative in EXPECTED_FILES.values()}
        for path in sorted(root.rglob("*.pth")):
            if path in expected:
                continue
            try:
                read_checkpoint(path)
                lines.append(f"{path.relative_to(root)}: optional, reads safely (not loaded into a network)")
            except UserInputError as error:
                reason = str(error).split(": ", 1)[-1]
                if "could run code" in reason:  # never install a file found to be code-running
                    raise fail(f"{zip_label}:{path.relative_to(root)}", f"{reason}; nothing installed") from None
                path.unlink()  # an unusable optional file is left out, not installed
                print(f"warning: {path.relative_to(root)}: optional file not usable, not installed ({reason})",
                      file=sys.stderr, flush=True)
    else:
        lines += [f"{relative}: present (load check skipped)" for relative in EXPECTED_FILES.values()]
    return lines


def install_plan(root: Path, output_dir: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(source, target) for every release file that is not already in place byte for byte, and the
    targets among them that exist and differ (a user's file the release would replace)."""
    import filecmp

    plan, conflicts = [], []
    for source in sorted(path for path in root.rglob("*") if path.is_file()):
        relative = source.relative_to(root)
        if "__MACOSX" in relative.parts:
            continue
        target = output_dir / relative
        if target.is_file() and not target.is_symlink() and filecmp.cmp(source, target, shallow=False):
            continue  # already installed: nothing to do, nothing to move aside
        if target.exists() or target.is_symlink():
            conflicts.append(target)
        plan.append((source, target))
    return plan, conflicts


def aside_name(target: Path) -> Path:
    """A free name beside ``target`` for the user's file it replaces: ``<name>.before-download-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, counter = target.with_name(f"{target.name}.before-download-{stamp}"), 1
    while candidate.exists() or candidate.is_symlink():
        candidate, counter = target.with_name(f"{target.name}.before-download-{stamp}-{counter}"), counter + 1
    return candidate


def move_into_place(root: Path, output_dir: Path, force: bool = False) -> tuple[list[Path], list[str]]:
    """Installs the release under ``root`` into ``output_dir`` file by file; returns (installed files, notes).

    Every file already in ``output_dir`` that the release does not bring is kept. A file the release
    would replace stops the run before anything moves, unless ``force``: then it is renamed aside
    (``<name>.before-download-<time>``) and a note says where. A failing move puts everything back.
    """
    plan, conflicts = install_plan(root, output_dir)
    if conflicts and not force:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise fail(conflicts[0], f"exists and differs from the release's file{more}; nothing installed "
                                 "(give --force to install and move your file aside as <name>.before-download-<time>)")
    moved: list[Path] = []
    asides: list[tuple[Path, Path]] = []
    try:
        for source, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target in conflicts:
                if target.is_dir() and not target.is_symlink():
                    raise IsADirectoryError(errno.EISDIR, "a folder is where the release has a file", str(target))
                backup = aside_name(target)
                os.replace(target, backup)
                asides.append((backup, target))
            os.replace(source, target)
            moved.append(target)
    except OSError as error:
        for target in moved:
            target.unlink(missing_ok=True)
        for backup, target in asides:
            os.replace(backup, target)
        raise fail(error.filename or output_dir, f"could not install ({error.strerror or error}); nothing changed") from None
    notes = [f"note: your {target} differed from the release's; moved aside to {backup.name}" for backup, target in asides]
    return moved, notes


def install_release(
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    zip_path: str | os.PathLike | None = None,
    check_configs: dict[str, dict] | None = None,
    load_check: bool = True,
    probe_timeout_s: float = 5.0,
    force: bool = False,
) -> list[str]:
    """Downloads (or takes ``zip_path``), extracts, checks and installs the release; returns the check lines."""
    output_dir = Path(output_dir)
    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    # The staging folder sits beside the output folder so the final moves are renames on one file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging.", dir=parent))
    try:
        if zip_path is None:
            zip_file = download_zip(staging / "release.zip", output_dir, probe_timeout_s)
            zip_label = MANUAL_LINK
        else:
            zip_file = Path(zip_path)
            zip_label = str(zip_file)
        extracted = staging / "extracted"
        extracted.mkdir()
        safe_extract(zip_file, extracted)
        root = find_release_root(extracted)
        if root is None:
            raise fail(zip_label, f"holds none of the expected files ({', '.join(EXPECTED_FILES.values())})")
        lines = check_release(root, zip_label, check_configs or {}, load_check)
        moved, notes = move_into_place(root, output_dir, force)
        installed = f"installed {', '.join(str(path) for path in moved)}" if moved else "already installed: nothing changed"
        return lines + notes + [installed]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
