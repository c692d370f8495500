"""``python -m serverless_comfyui.crd``: print the FluxWorkflow CRD YAML.

``--output PATH`` writes it to a file instead; ``--check PATH`` exits 1 when the file differs
(the chart's copy, ``generate.CHART_PATH``: the CRD subchart inside charts/serverless-comfyui).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serverless_comfyui.crd.generate import CHART_PATH, crd_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serverless_comfyui.crd",
        description="Print the FluxWorkflow CustomResourceDefinition generated from the models.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--output", "-o", type=Path, help="write the YAML to this file")
    group.add_argument("--check", type=Path, help="exit 1 when this file is not up to date")
    args = parser.parse_args(argv)

    text = crd_yaml()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else None
        if current != text:
            print(
                f"{args.check} is out of date; regenerate it with\n"
                f"  .venv/bin/python -m serverless_comfyui.crd --output {CHART_PATH}",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
