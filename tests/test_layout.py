"""The package's folders follow the data, and a module imports only from folders before its own."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "spinseg"
# The README's layout, in order: a module may import from its own folder and from those before it.
ORDER = ["constants", "errors", "lesions", "io", "runtime", "datasets", "data", "models", "acceleration", "recipes",
         "inference", "evaluation", "training", "experiments", "cli"]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of ``path`` (relative imports resolved)."""
    found = []
    package = ["spinseg", *path.relative_to(PACKAGE).parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_every_module_lives_in_a_known_folder():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            assert parts[0] in ORDER, f"{path}: folder {parts[0]!r} is not in the layout"


def test_dependencies_point_only_to_earlier_folders():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own not in ORDER:  # the thin shims of the public API (spinseg.checkpoint, python -m spinseg.train, ...)
            continue
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "spinseg" and len(parts) > 1 and parts[1] in ORDER and ORDER.index(parts[1]) > ORDER.index(own):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_no_module_imports_the_trainer_except_its_users_above_it():
    users = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0]
        if own in ("experiments", "cli", "training"):
            continue
        users += [f"{path}:{line}" for line, module in imported_modules(path) if module.startswith("spinseg.training.trainer")]
    assert not users, users
