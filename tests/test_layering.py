"""Layering: the library never imports ``data_prep``; only the command line (``asrdistill/cli``) uses both.

``data_prep/`` (corpus download and synthesis) builds on the library, so an import the other way
would make the library depend on a recipe helper. Imports are read with :mod:`ast`, so one inside a
function (the lazy kind) counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asrdistill"


def _is_cli(path: Path) -> bool:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] in ("cli", "cli.py")


def data_prep_imports(path: Path) -> list[str]:
    """``"<line>: <module>"`` for every import of ``data_prep`` (or a submodule) in the Python file ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "data_prep" or n.startswith("data_prep.")]
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_library_modules_do_not_import_data_prep() -> None:
    offenders = {
        str(p.relative_to(PACKAGE.parent)): hits
        for p in sorted(PACKAGE.rglob("*.py"))
        if not _is_cli(p) and (hits := data_prep_imports(p))
    }
    assert not offenders, f"library modules import data_prep (move what they need into asrdistill/): {offenders}"


def test_the_check_sees_the_cli_imports(tmp_path: Path) -> None:
    """The scanner finds the CLI's lazy imports and every import form, so the check above is not vacuous."""
    assert any(data_prep_imports(p) for p in PACKAGE.rglob("*.py") if _is_cli(p))
    src = tmp_path / "m.py"
    src.write_text(
        "import data_prep\nimport os, data_prep.text as t\nfrom data_prep.espeak_x import y\n"
        "def f():\n    from data_prep import synthetic\nfrom .data_prep import z\nimport data_prepx\n"
    )
    assert data_prep_imports(src) == ["1: data_prep", "2: data_prep.text", "3: data_prep.espeak_x", "5: data_prep"]
