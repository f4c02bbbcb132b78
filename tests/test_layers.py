"""The layers of the package, read from the source: the library (``nas/*.py``, ``nas/lut/``)
imports neither the training kit (``nas/training/``) nor the app (``nas/app/``); the
training kit and the plug-ins (``spaces/``, ``searchers/``) never import the app; nothing
in ``nas`` imports a plug-in by name. Imports inside functions count as well."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: ``python -m nas.X`` doors into the app (two lines each)
LAUNCHERS = {"nas/run.py", "nas/sweep.py", "nas/dashboard.py", "nas/report.py", "nas/lut/__main__.py"}


def layer_of(path: str) -> str:
    if path in LAUNCHERS:
        return "launcher"
    if path.startswith("nas/training/"):
        return "training"
    if path.startswith("nas/app/"):
        return "app"
    if path.startswith("nas/"):
        return "library"
    return "plug-in"


FORBIDDEN = {
    "library": ("nas.training", "nas.app", "spaces", "searchers"),
    "training": ("nas.app", "spaces", "searchers"),
    "plug-in": ("nas.app",),
    "app": ("spaces", "searchers"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names; ``from nas
    import world`` counts as ``nas.world``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def sources() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for folder in ("nas", "spaces", "searchers")
                  for p in (ROOT / folder).rglob("*.py"))


def breaks(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("path", sources())
def test_imports_follow_the_layers(path):
    layer = layer_of(path)
    imports = imported_modules(ROOT / path)
    if layer == "launcher":
        assert {m for _, m in imports if m.startswith("nas")} <= {"nas.app." + Path(path).stem, "nas.app.lut",
                                                                   f"nas.app.{Path(path).stem}.main", "nas.app.lut.main"}
        return
    wrong = [f"{path}:{line} imports {module}" for line, module in imports if breaks(module, FORBIDDEN[layer])]
    assert not wrong, f"the {layer} layer may not import {FORBIDDEN[layer]}: {wrong}"


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from nas import app\n    import nas.training.train\n")
    modules = [m for _, m in imported_modules(bad)]
    assert breaks("nas.app", FORBIDDEN["library"]) and "nas.app" in modules
    assert any(breaks(m, FORBIDDEN["library"]) for m in modules if m.startswith("nas.training"))
    assert layer_of("nas/lut/fast.py") == "library" and layer_of("nas/training/harness.py") == "training"
    assert layer_of("searchers/tunas.py") == "plug-in" and layer_of("nas/run.py") == "launcher"
