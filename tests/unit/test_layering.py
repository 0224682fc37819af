"""The domain imports the standard library and itself only (import-linter guards the rest)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "kexec" / "domain"


def test_domain_imports_only_stdlib_and_itself() -> None:
    offenders = []
    for path in DOMAIN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("kexec", "__future__"):
                    offenders.append(f"{path.name}: {name}")
                if name.startswith("kexec.") and not name.startswith("kexec.domain"):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
