"""dvc.yaml's code deps cannot drift from the imports, and the layers of clapart_core stay in order.

A stage whose ``deps`` miss a module it runs is not rerun when that module changes: ``dvc repro``
then reports "up to date" over stale results. So for every stage (the ``foreach`` fine-tuning ones
included) this computes the transitive closure of the project modules its script imports,
function-level imports included, and requires each to be covered by a dep (the file itself or a
folder above it).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("clapart_core", "stages")
#: the figure's order: a module may import from its own folder, from pipeline/ and from earlier folders
FIGURE = ("corpus", "encoders", "tokens", "captioner", "scoring")
#: the one door from an earlier layer (or the plumbing) to a later one: the token-type registry
REGISTRY = "clapart_core/encoders/registry.py"


def _module_file(name: str) -> Path | None:
    """``clapart_core.encoders.beats`` -> its source file (a package -> its ``__init__.py``)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_trivial(init: Path) -> bool:
    """A package ``__init__.py`` holding only a docstring and constants runs nothing worth a dep."""
    tree = ast.parse(init.read_text())
    return all(isinstance(node, (ast.Expr, ast.Assign)) and not isinstance(getattr(node, "value", None), ast.Call) for node in tree.body)


@cache
def _direct_imports(path: Path) -> frozenset[Path]:
    """Project files that importing ``path`` executes directly (parent packages included)."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    files: set[Path] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            found = _module_file(".".join(parts[:i]))
            if found is not None and found != path:
                files.add(found)
    return frozenset(files)


def _reachable(start: Path) -> set[Path]:
    """Every project file that importing ``start`` may execute, ``start`` only if through a circle."""
    seen, todo = set(), [start]
    while todo:
        for dep in _direct_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def import_closure(script: Path) -> set[Path]:
    """Every project source file that running ``script`` may execute (trivial package inits left out)."""
    return {p for p in _reachable(script) | {script} if not (p.name == "__init__.py" and _is_trivial(p))}


def _stages() -> list[tuple[str, dict]]:
    """Every stage of dvc.yaml; a ``foreach`` stage once, with ``${key}`` standing for any entry."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, body.get("do", body)) for name, body in spec.items()]


def _script(stage: dict) -> Path:
    match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"stage command {stage['cmd']!r} does not run a stages/ module"
    return _module_file(match.group(1))


def _dep_paths(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


def missing_deps(stage: dict) -> list[str]:
    """The project files ``stage``'s script runs that no dep (file or folder) covers."""
    deps = [d.rstrip("/") for d in _dep_paths(stage)]
    missing = []
    for path in sorted(import_closure(_script(stage))):
        rel = path.relative_to(ROOT).as_posix()
        if not any(rel == d or rel.startswith(d + "/") for d in deps):
            missing.append(rel)
    return missing


@pytest.mark.parametrize(("name", "stage"), _stages(), ids=[name for name, _ in _stages()])
def test_stage_deps_cover_every_module_it_imports(name: str, stage: dict) -> None:
    missing = missing_deps(stage)
    assert not missing, f"dvc.yaml stage {name!r} runs {', '.join(missing)} but does not list it under deps"


@pytest.mark.parametrize(("name", "stage"), _stages(), ids=[name for name, _ in _stages()])
def test_stage_code_deps_are_all_used(name: str, stage: dict) -> None:
    """The converse: a listed module the stage never runs would rerun it for nothing."""
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(_script(stage))}
    unused = [d for d in _dep_paths(stage) if d.endswith(".py") and d not in closure]
    assert not unused, f"dvc.yaml stage {name!r} lists {', '.join(unused)}, which it never imports"


def test_closure_follows_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The closure sees imports inside functions (where the drift hid) and ``from pkg import mod``."""
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(ROOT / "stages/score.py")}
    assert "clapart_core/captioner/model.py" in closure  # reached only through other modules
    assert "clapart_core/pipeline/params.py" in closure


def _layer(path: Path) -> int | None:
    """Position of a clapart_core module's folder in the figure; -1 for the pipeline plumbing."""
    parts = path.relative_to(ROOT / "clapart_core").parts
    if len(parts) == 1:
        return None  # cli.py and the package root: the top, may import anything
    return -1 if parts[0] == "pipeline" else FIGURE.index(parts[0])


def test_no_module_imports_a_later_part_of_the_figure() -> None:
    """corpus < encoders < tokens < captioner < scoring over pipeline/: imports only point down,
    except through the token-type registry, the one place that knows every token type."""
    wrong = []
    for path in sorted((ROOT / "clapart_core").rglob("*.py")):
        mine = _layer(path)
        if mine is None or path == ROOT / REGISTRY:
            continue
        for dep in _direct_imports(path):
            other = _layer(dep) if dep.is_relative_to(ROOT / "clapart_core") else None
            if other is not None and other > mine and dep != ROOT / REGISTRY and not (dep.name == "__init__.py" and _is_trivial(dep)):
                wrong.append(f"{path.relative_to(ROOT)} -> {dep.relative_to(ROOT)}")
    assert not wrong, "imports against the figure's order: " + "; ".join(wrong)


def test_no_import_circle() -> None:
    """No module reaches itself through its imports (function-level ones included)."""
    circles = []
    for path in sorted((ROOT / "clapart_core").rglob("*.py")):
        if path in _reachable(path):
            circles.append(path.relative_to(ROOT).as_posix())
    assert not circles, "modules that import themselves through others: " + ", ".join(circles)
