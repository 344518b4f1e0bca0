"""The layering docs/architecture.md promises, checked on the source: dependencies point down, files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the library: plain numpy/torch/faiss code that the application builds on
LIBRARY = ("ecos_pl/protocol", "ecos_pl/data", "ecos_pl/phi", "ecos_pl/models.py", "ecos_pl/pipeline.py")
#: what the library may not import: the application layer above it
APPLICATION = ("ecos_pl.scenarios", "datamodules", "callbacks", "ecos_pl.experiment", "ecos_pl.cli", "ecos_pl.flower",
               "train", "eval")


def _files(*roots: str) -> list[Path]:
    out = []
    for r in roots:
        p = ROOT / r
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", _files(*LIBRARY), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_nothing_from_the_application(path):
    wrong = sorted(n for n in _imports(path) if _under(n, APPLICATION))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_scenarios_do_not_import_the_datamodule():
    wrong = {str(p.relative_to(ROOT)): n for p in _files("ecos_pl/scenarios") for n in _imports(p) if _under(n, ("datamodules",))}
    assert not wrong


def test_no_file_in_ecos_pl_is_over_400_lines_and_the_cloud_program_under_300():
    long = {str(p.relative_to(ROOT)): n for p in _files("ecos_pl") if (n := len(p.read_text().splitlines())) > 400}
    assert not long
    assert len((ROOT / "ecos_pl/cli/cloud.py").read_text().splitlines()) < 300
