"""``python -m serverless_comfyui.downloader --dest /models --manifest manifest.json``

Downloads every file of the manifest (a JSON list of ``{name, url, dir, sha256?}``, the shape of
``FluxWorkflow.spec.models``) to ``<dest>/<dir>/<name>``. Progress goes to stdout as JSON lines
(``start``, ``progress``, ``retry``, ``waiting``, ``done``, ``error``, then one ``summary``);
each model's outcome is also written to ``<dest>/.serverless-comfyui/<name>.json``.

The Hugging Face token comes from ``--token-file`` (e.g. a mounted Secret) or ``$HF_TOKEN``, and
is only sent to Hugging Face hosts unless ``--token-host`` adds others.

Exit status: 0 when every file is in place, 1 when any failed (after trying all), 2 for a bad
command line or manifest, 3 when every failure is permanent (authentication, not found,
checksum mismatch): retrying the Job cannot help, and its podFailurePolicy fails it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from serverless_comfyui.downloader.core import (
    DEFAULT_TOKEN_HOSTS,
    DownloadResult,
    ManifestError,
    download_models,
    load_manifest,
    print_event,
    read_token,
)

EXIT_PERMANENT = 3


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m serverless_comfyui.downloader",
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
    parser.add_argument(
        "--termination-log",
        type=Path,
        help="write the per-model results here as JSON (a pod's terminationMessagePath), "
        "so the operator can put them in the FluxWorkflow's status",
    )
    return parser


def write_termination_log(path: Path, results: list[DownloadResult]) -> None:
    """Kubernetes keeps at most 4096 bytes of a termination message: drop error details
    before dropping models, so every model keeps its state."""
    states = [
        r.to_status().model_dump(mode="json", by_alias=True, exclude_none=True) for r in results
    ]
    text = json.dumps(states, separators=(",", ":"))
    if len(text.encode()) > 4096:
        for state in states:
            if "error" in state:
                state["error"] = state["error"][:80]
        text = json.dumps(states, separators=(",", ":"))
    path.write_text(text[:4096])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
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
    if args.termination_log is not None:
        write_termination_log(args.termination_log, results)
    failed = [r.name for r in results if not r.ok]
    print_event({"event": "summary", "ok": len(results) - len(failed), "failed": failed})
    if not failed:
        return 0
    return EXIT_PERMANENT if all(r.permanent for r in results if not r.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
