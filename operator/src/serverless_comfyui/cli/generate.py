"""`serverless-comfyui generate`: one image through the proxy's generation API.

Posts an async task to `/v1/generate`, follows its server-sent events (`/v1/tasks/{id}/events`)
with a progress bar, then saves the images. A task that fails (ComfyUI refused the prompt, a
node raised, no pod could start) ends the command with status 1 and the task's error message;
a request the API refuses (422, unknown model) with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from tqdm import tqdm

EXIT_FAILED = 1
EXIT_REFUSED = 2
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
# The server sends a keepalive every few seconds; a minute without a byte means it is gone.
READ_TIMEOUT_SECONDS = 60.0
RECONNECTS = 5


class GenerateError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "generate",
        help="generate an image through a running proxy",
        description="Generate an image through the proxy's generation API, showing progress.",
    )
    parser.add_argument("prompt", help="the text prompt")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="where to save the image (.png, .jpg, .webp; more images get -1, -2, ...)",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("SERVERLESS_COMFYUI_MODEL", "serverless-comfyui"),
        help="the application (FluxWorkflow) name (default $SERVERLESS_COMFYUI_MODEL or "
        "serverless-comfyui)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("SERVERLESS_COMFYUI_URL", "http://127.0.0.1:8080"),
        help="the proxy (default $SERVERLESS_COMFYUI_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument("--workflow", help="a library workflow (default: the application's)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a workflow parameter (repeatable); VALUE is read as JSON when it parses "
        "(steps=4, seed=null), else as text",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SERVERLESS_COMFYUI_API_KEY"),
        help="API key (default $SERVERLESS_COMFYUI_API_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up after this many seconds (default 1800: a cold start can take minutes)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GenerateError(f"--param {pair!r}: expected KEY=VALUE", EXIT_REFUSED)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {**parse_params(args.param), "model": args.model, "prompt": args.prompt}
    body["mode"] = "async"
    if args.workflow:
        body["workflow"] = args.workflow
    fmt = FORMATS.get(args.output.suffix.lower())
    if fmt is None:
        raise GenerateError(
            f"{args.output}: unknown image type (use {', '.join(FORMATS)})", EXIT_REFUSED
        )
    body["output"] = {"format": fmt, "delivery": "url"}
    return body


def error_text(answer: httpx.Response) -> str:
    """The API's error shape `{"error": {"message", "errors"?}}`, or the raw body."""
    try:
        error = answer.json().get("error") or {}
    except (ValueError, AttributeError):
        return f"HTTP {answer.status_code}: {answer.text[:500]}"
    message = str(error.get("message") or f"HTTP {answer.status_code}")
    details = [f"{e.get('field')}: {e.get('message')}" for e in error.get("errors") or []]
    if details == [message]:
        return message
    return "\n  ".join([message, *details])


@dataclass
class Follower:
    """Follows a task's events to its end, resuming after a dropped connection."""

    client: httpx.Client
    task_id: str
    bar: tqdm[Any]
    last_event_id: str | None = None
    final: dict[str, Any] = field(default_factory=dict)

    def follow(self, deadline: float) -> dict[str, Any]:
        for _ in range(RECONNECTS):
            headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
            try:
                with connect_sse(
                    self.client, "GET", f"/v1/tasks/{self.task_id}/events", headers=headers
                ) as source:
                    for event in source.iter_sse():
                        if self.handle(event) or time.monotonic() > deadline:
                            return self.final
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                self.bar.write(f"reconnecting to the task's events ({exc})", file=sys.stderr)
                time.sleep(1.0)
            if time.monotonic() > deadline:
                break
        return self.final

    def handle(self, event: ServerSentEvent) -> bool:
        """Apply one event; True when it ends the task."""
        if event.id:
            self.last_event_id = event.id
        data: dict[str, Any] = json.loads(event.data) if event.data else {}
        if event.event == "progress":
            self.bar.total = data.get("max") or self.bar.total
            self.bar.n = int(data.get("value") or 0)
            self.bar.set_postfix_str(f"node {data.get('node')}", refresh=False)
            self.bar.refresh()
        elif event.event == "status":
            self.bar.set_description(str(data.get("phase") or data.get("status")))
        elif event.event in ("completed", "failed", "cancelled"):
            self.final = {"event": event.event, **data}
            return True
        return False


def save_results(client: httpx.Client, task: dict[str, Any], output: Path) -> list[Path]:
    results = task.get("results") or []
    if not results:
        raise GenerateError(f"task {task.get('id')} completed without an image")
    saved: list[Path] = []
    for index, result in enumerate(results):
        target = output if len(results) == 1 else output.with_stem(f"{output.stem}-{index + 1}")
        answer = client.get(result["url"])
        if answer.status_code != 200:
            raise GenerateError(f"downloading {result['url']}: {error_text(answer)}")
        target.write_bytes(answer.content)
        saved.append(target)
    return saved


def generate(args: argparse.Namespace) -> list[Path]:
    deadline = time.monotonic() + args.timeout
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_SECONDS)
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=timeout) as client:
        try:
            answer = client.post("/v1/generate", json=request_body(args))
        except httpx.TransportError as exc:
            raise GenerateError(f"cannot reach the proxy at {args.url}: {exc}") from exc
        if answer.status_code not in (200, 201, 202):
            raise GenerateError(error_text(answer), EXIT_REFUSED)
        task_id = answer.json()["id"]
        with tqdm(
            total=None, desc="queued", unit="step", file=sys.stderr, disable=args.quiet
        ) as bar:
            bar.write(f"task {task_id} (model {args.model})", file=sys.stderr)
            final = Follower(client, task_id, bar).follow(deadline)
        if not final:
            raise GenerateError(f"task {task_id}: no result within {args.timeout:.0f} s")
        if final["event"] != "completed":
            error = final.get("error") or {}
            message = error.get("message") or final["event"]
            raise GenerateError(f"task {task_id} {final['event']}: {message}")
        return save_results(client, final, args.output)


def run(args: argparse.Namespace) -> int:
    try:
        saved = generate(args)
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    for path in saved:
        print(path)
    return 0
