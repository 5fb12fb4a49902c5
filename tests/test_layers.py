"""The package's floors: util < core < structured < lab < the CLI. A module may import only its own
floor or lower ones, never another module's underscore name, and no import cycle may remain."""
import ast
from pathlib import Path

import rdprune

PKG = Path(rdprune.__file__).parent
FLOORS = {"util": 0, "core": 1, "structured": 2, "lab": 3, "__main__": 4, "__init__": 4}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS["__init__"] if len(parts) == 1 else FLOORS[parts[1]]


def imports(module: str, path: Path, known):
    """(imported rdprune module, imported name) pairs of ``module``."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "rdprune":
                    yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            tgt = (".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module
                                                                   else []))
                   if node.level else node.module or "")
            if tgt.split(".")[0] != "rdprune":
                continue
            for a in node.names:
                sub = f"{tgt}.{a.name}"
                yield (sub, None) if sub in known else (tgt, a.name)


def problems(root: Path) -> list[str]:
    """Every layering violation, private-name import and import cycle below ``root``."""
    mods, out, edges = modules(root), [], {}
    for name, path in mods.items():
        for target, imported in imports(name, path, mods):
            if target not in mods or target == name:
                continue
            if floor(target) > floor(name):
                out.append(f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})")
            if imported and imported.startswith("_") and not imported.startswith("__"):
                out.append(f"{name} imports the private {target}.{imported}")
            if not path.name == "__init__.py" and not mods[target].name == "__init__.py":
                edges.setdefault(name, set()).add(target)
    state = {}

    def visit(u, stack):
        state[u] = 1
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                out.append("import cycle: " + " -> ".join(stack[stack.index(v):] + [v]))
            elif not state.get(v):
                visit(v, stack + [v])
        state[u] = 2
    for u in sorted(edges):
        if not state.get(u):
            visit(u, [u])
    return out


def test_floors_private_names_and_cycles():
    assert problems(PKG) == []


def test_every_module_has_a_floor():
    for name in modules(PKG):
        floor(name)  # KeyError names a module outside util/core/structured/lab


def test_checker_catches_a_core_module_that_imports_the_lab(tmp_path):
    """The check can fail: a copy of the package whose core imports the lab, a private name and a
    cycle is reported three times over."""
    import shutil
    root = tmp_path / "rdprune"
    shutil.copytree(PKG, root, ignore=shutil.ignore_patterns("__pycache__"))
    knap = root / "core" / "knapsack.py"
    knap.write_text(knap.read_text() + "\nfrom ..lab import data  # noqa\n"
                    "from .masks import _EPS  # noqa\nfrom . import allocators  # noqa\n")
    found = problems(root)
    assert any("rdprune.core.knapsack (floor 1) imports rdprune.lab.data (floor 3)" in p
               for p in found)
    assert any("private rdprune.core.masks._EPS" in p for p in found)
    assert any(p.startswith("import cycle") and "knapsack" in p for p in found)
