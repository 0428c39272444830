"""The package's layout is its architecture: each folder imports only from the floors below it."""
import ast
from pathlib import Path

import chargpt

PACKAGE = Path(chargpt.__file__).parent
# Each part of the package and its floor; a module may import from a lower floor or from its own part.
FLOORS = {"errors": 0, "fsutil": 1, "schema": 1, "config": 2, "runtime": 3, "data": 4, "model": 4, "runs": 5,
          "track": 6, "training": 7, "serve": 7, "sweeps": 8, "cli": 9, "library": 9, "__init__": 10, "__main__": 10}


def part_of(parts: list[str]) -> str:
    return parts[0] if (PACKAGE / parts[0]).is_dir() else parts[0].removesuffix(".py")


def imports_of(source: str, where: Path) -> set[str]:
    """The parts of chargpt that `source`, the module at `where` in the package, imports (relative imports and
    `chargpt.x` alike)."""
    here = list(where.parent.parts)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            if target:
                found.add(part_of(target))
            else:  # `from .. import name`: the package's own top-level names
                found |= {part_of([a.name]) for a in node.names if (PACKAGE / a.name).exists()
                          or (PACKAGE / f"{a.name}.py").exists()} or {"__init__"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chargpt."):
            found.add(part_of(node.module.split(".")[1:]))
    return found


def test_every_part_of_the_package_has_a_floor():
    parts = {part_of([p.name]) for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert parts == set(FLOORS)


def test_no_module_imports_from_a_floor_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = part_of(list(path.relative_to(PACKAGE).parts))
        for other in imports_of(path.read_text(), path.relative_to(PACKAGE)) - {mine}:
            if other != "__init__" and FLOORS[other] >= FLOORS[mine]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert upward == []


def test_the_check_sees_an_import_back_up_in_each_form():
    """Guards the test above: imports from a higher floor are found, however they are written."""
    where = Path("runs/checkpoint.py")
    assert imports_of("from ..training.optim import make_optimizers\n", where) == {"training"}
    assert imports_of("from ..training import optim\n", where) == {"training"}
    assert imports_of("from chargpt.serve.app import serve\n", where) == {"serve"}
    assert imports_of("from .. import cli\n", where) == {"cli"}
    assert imports_of("from .rundir import RunDir\n", where) == {"runs"}
    assert imports_of("from .config import Config\n", Path("cli.py")) == {"config"}
