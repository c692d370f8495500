"""Webhooks of /v1 tasks end to end: signed with the configured secret (verified here
independently), retried with backoff against a failing receiver, every attempt and the final
failure visible on the task."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import aiohttp

from api_harness import (
    add_pod,
    emulator,
    fast_settings,
    file_store_url,
    flux_body,
    serve_api,
    wait_task,
    webhook_receiver,
)
from serverless_comfyui.api.webhooks import generate_secret
from serverless_comfyui.proxy.registry import Registry


def delivered_or_failed(task: dict[str, object]) -> bool:
    hook = task.get("webhook")
    return isinstance(hook, dict) and hook.get("state") in ("delivered", "failed")


async def test_completed_task_is_delivered_signed_and_failures_are_recorded(tmp_path: Path) -> None:
    secret = generate_secret()
    registry = Registry()
    settings = fast_settings(
        tmp_path, file_store_url(tmp_path), webhook_secret=secret, webhook_max_attempts=3
    )
    async with (
        emulator(tmp_path, "a") as emu,
        aiohttp.ClientSession() as session,
        webhook_receiver() as good,
        webhook_receiver(default_status=500) as bad,
    ):
        add_pod(registry, "pod-a", emu.url)
        async with serve_api(settings, registry) as api:
            ok_body = flux_body(
                mode="async", webhook={"url": good.url}, output={"delivery": "base64"}
            )
            async with session.post(f"{api.v1}/generate", json=ok_body) as answer:
                ok = await answer.json()
            async with session.post(
                f"{api.v1}/generate", json=flux_body(mode="async", webhook={"url": bad.url})
            ) as answer:
                failing = await answer.json()
            ok = await wait_task(session, api.v1, ok["id"], delivered_or_failed)
            failing = await wait_task(session, api.v1, failing["id"], delivered_or_failed)

    assert ok["webhook"]["state"] == "delivered"
    [(_, headers, raw)] = good.requests
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{digest}"
    payload = json.loads(raw)
    assert payload["type"] == "task.completed" and payload["data"]["id"] == ok["id"]
    [result] = payload["data"]["results"]
    assert base64.b64decode(result["base64"])[:4] == b"\x89PNG"
    assert result["url"].startswith(api.v1)

    hook = failing["webhook"]
    assert hook["state"] == "failed" and len(bad.requests) == 3
    assert [d["status"] for d in hook["deliveries"]] == [500, 500, 500]
    assert hook["failure"] == "gave up after 3 attempt(s); last: HTTP 500"
    assert failing["status"] == "completed"  # the task itself is fine
    assert len({h["webhook-id"] for _, h, _ in bad.requests}) == 1
