#!/usr/bin/env python3
"""Regenerate deploy/crd.yaml and deploy/rbac/*.yaml from kexec's models.

    python hack/generate-deploy.py          # write the files
    python hack/generate-deploy.py --check  # exit 1 if any checked-in file is stale

The CRD schema comes from the pydantic models in kexec.adapters.kubernetes.crd (the
per-action parameter models are generated from the domain's Param data); the RBAC
from the domain's per-action rules. Output is deterministic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # works without an installed package too

from kexec.adapters.kubernetes.manifests import generated_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for rel, content in generated_files().items():
        path = ROOT / rel
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            print(f"wrote {rel}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run: python hack/generate-deploy.py", file=sys.stderr)
        return 1
    if not stale:
        print("deploy/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
