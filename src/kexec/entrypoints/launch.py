"""The ``kexec`` command: ``kexec runner`` (every Job pod) starts without loading the CLI.

The CLI imports click, rich, yaml, the controller and kubernetes-asyncio (≈ 0.6 s CPU,
≈ 90 MB); the runner needs none of it (``entrypoints/runner.py``).
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["runner"]:
        from kexec.entrypoints.runner import main as runner_main

        sys.exit(runner_main())
    from kexec.entrypoints.cli import main as cli_main

    cli_main()
