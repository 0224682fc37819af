"""Tools are not test code: nothing under src/, devstack/, hack/ or bench/ imports ``tests``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL_DIRS = ("src", "devstack", "hack", "bench")
SHELL_RUNS_TESTS = re.compile(r"-m\s+tests(\.|\s|$)")


def imports_of_tests(source: str) -> list[str]:
    """The ``tests``/``tests.*`` modules a Python source imports (at any depth, lazily or not)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "tests" or a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tests" or node.module.startswith("tests."):
                found.append(node.module)
    return found


def test_the_check_sees_every_import_form() -> None:
    src = "import tests\nimport os, tests.unit.world\nfrom tests.support import plugin\n" \
          "def f():\n    from tests import x\nfrom testsuite import y\nimport contests\n"
    assert imports_of_tests(src) == ["tests", "tests.unit.world", "tests.support", "tests"]
    assert SHELL_RUNS_TESTS.search('exec "$PY" -m tests.support.controlplane "$@"')
    assert not SHELL_RUNS_TESTS.search('exec "$PY" -m devstack.controlplane "$@"')


def test_no_tool_imports_tests() -> None:
    offenders = []
    python_files = 0
    for top in TOOL_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            python_files += 1
            for module in imports_of_tests(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
        for path in sorted((ROOT / top).rglob("*.sh")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if SHELL_RUNS_TESTS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n} runs a tests module: {line.strip()}")
    assert python_files > 50  # the walk really saw the tools
    assert offenders == []
