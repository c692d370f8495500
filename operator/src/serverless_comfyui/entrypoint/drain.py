"""`python -m serverless_comfyui.entrypoint drain`: the exec-hook form of the preStop drain.

It asks the entrypoint running in the same container (`GET /drain` on its health port) and
waits for the answer. Exit status: 0 drained, 2 work was left at the deadline, 1 no answer.
"""

from __future__ import annotations

import json
import os
import sys

import httpx


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('HEALTH_PORT', '8189')}"


def drain_via_http(url: str, timeout: float | None) -> int:
    try:
        response = httpx.get(url.rstrip("/") + "/drain", timeout=timeout)
    except httpx.HTTPError as exc:
        print(json.dumps({"drained": False, "error": str(exc) or type(exc).__name__}))
        return 1
    try:
        body = response.json()
    except ValueError:
        body = {"drained": False, "error": f"HTTP {response.status_code}: {response.text[:200]}"}
    print(json.dumps(body))
    if response.status_code != 200 or not isinstance(body, dict):
        return 1
    return 0 if body.get("drained") is True else 2


def main(url: str | None, timeout: float | None) -> int:
    code = drain_via_http(url or default_url(), timeout)
    sys.stdout.flush()
    return code
