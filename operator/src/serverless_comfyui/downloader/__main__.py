"""``python -m serverless_comfyui.downloader --dest /models --manifest manifest.json``

Downloads every file of the manifest (a JSON list of ``{name, url, dir, sha256?}``, the shape of
``FluxWorkflow.spec.models``) to ``<dest>/<dir>/<name>``. Progress goes to stdout as JSON lines
(``start``, ``progress``, ``retry``, ``waiting``, ``done``, ``error``, then one ``summary``);
each model's outcome is also written to ``<dest>/.serverless-comfyui/<name>.json``.

The Hugging Face token comes from ``--token-file`` (e.g. a mounted Secret) or ``$HF_TOKEN``, and
is only sent to Hugging Face hosts unless ``--token-host`` adds others.

Exit status: 0 when every file is in place, 1 when any failed (after trying all), 2 for a bad
command line or manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from serverless_comfyui.downloader.core import (
    DEFAULT_TOKEN_HOSTS,
    ManifestError,
    download_models,
    load_manifest,
    print_event,
    read_token,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serverless_comfyui.downloader",
        description="Download ComfyUI model files: resumable, sha256-verified, atomic.",
    )
    parser.add_argument("--dest", required=True, type=Path, help="ComfyUI models folder")
    parser.add_argument(
        "--manifest", required=True, help="JSON list of {name, url, dir, sha256?}; '-' for stdin"
    )
    parser.add_argument(
        "--token-file", type=Path, help="file holding the Hugging Face token (default: $HF_TOKEN)"
    )
    parser.add_argument(
        "--token-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also send the token to HOST and its subdomains ('*': everywhere); "
        f"always: {', '.join(DEFAULT_TOKEN_HOSTS)}",
    )
    parser.add_argument("--retries", type=int, default=5, help="attempts per file (default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="files at a time (default 1)")
    parser.add_argument(
        "--rehash", action="store_true", help="re-hash present files instead of trusting the cache"
    )
    parser.add_argument(
        "--progress-interval", type=float, default=2.0, help="seconds between progress events"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        models = load_manifest(args.manifest)
        token = read_token(args.token_file)
    except (ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = asyncio.run(
        download_models(
            args.dest,
            models,
            concurrency=args.concurrency,
            token=token,
            token_hosts=(*DEFAULT_TOKEN_HOSTS, *args.token_host),
            max_attempts=max(1, args.retries),
            rehash=args.rehash,
            progress_interval=args.progress_interval,
        )
    )
    failed = [r.name for r in results if not r.ok]
    print_event({"event": "summary", "ok": len(results) - len(failed), "failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
