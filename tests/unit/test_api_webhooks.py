"""Standard Webhooks signing, and deliveries: retried with exponential backoff, every attempt
and the final failure recorded on the task."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from api_harness import webhook_receiver
from serverless_comfyui.api.models import Task, WebhookState
from serverless_comfyui.api.store import TaskStore, open_store
from serverless_comfyui.api.webhooks import (
    WebhookDispatcher,
    backoff_seconds,
    generate_secret,
    secret_key,
    sign,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_signature_matches_the_spec() -> None:
    body = b'{"test": 2432232314}'
    signature = sign(secret_key(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    # The example of the Standard Webhooks specification.
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature == independent_signature(
        SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body
    )
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,bm9wZQ== {signature}",
    }
    assert verify(SECRET, headers, body, now=1614265330)
    assert not verify(SECRET, headers, body + b" ", now=1614265330)
    assert not verify(SECRET, headers, body, now=1614265330 + 3600)  # too old


def test_secrets_are_checked() -> None:
    assert len(secret_key(generate_secret())) == 32
    for bad in ("nope", "whsec_***", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            secret_key(bad)


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_seconds(n, 2.0, 30.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TaskStore]:
    made = open_store(f"file://{tmp_path / 'store'}", retention_seconds=60)
    yield made
    await made.close()


async def finished_task(store: TaskStore, url: str) -> Task:
    task = Task(model="flux", webhook=WebhookState(url=url, state="pending", message_id="msg_x"))
    task.status, task.phase = "completed", "done"
    task.timings.finished_at = time.time()
    await store.create(task)
    await store.claim("w", 0)
    await store.schedule_webhook(task.id, time.time())
    return task


def dispatcher(
    store: TaskStore, session: aiohttp.ClientSession, attempts: int
) -> WebhookDispatcher:
    async def payload(task: Task) -> dict[str, object]:
        return {"type": f"task.{task.status}", "data": {"id": task.id}}

    return WebhookDispatcher(
        store,
        session,
        payload,
        secret=SECRET,
        max_attempts=attempts,
        initial_backoff=0.1,
        max_backoff=10.0,
        timeout=2.0,
        poll_seconds=0.02,
    )


async def wait_state(store: TaskStore, task_id: str, states: set[str]) -> Task:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        task = await store.get(task_id)
        assert task is not None and task.webhook is not None
        if task.webhook.state in states:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"webhook of {task_id} never reached {states}")


async def test_failing_receiver_is_retried_with_backoff_then_given_up(store: TaskStore) -> None:
    async with webhook_receiver(default_status=500) as receiver, aiohttp.ClientSession() as session:
        task = await finished_task(store, receiver.url)
        sender = dispatcher(store, session, attempts=4)
        sender.start()
        try:
            done = await wait_state(store, task.id, {"failed"})
        finally:
            await sender.stop()
    assert done.webhook is not None
    deliveries = done.webhook.deliveries
    assert [d.attempt for d in deliveries] == [1, 2, 3, 4]
    assert [d.status for d in deliveries] == [500] * 4
    assert all(d.error == "HTTP 500" for d in deliveries)
    assert done.webhook.failure == "gave up after 4 attempt(s); last: HTTP 500"
    times = [t for t, _, _ in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1, 0.2, 0.4 s: each wait at least the backoff, and growing.
    for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= backoff - 0.02
    assert gaps[2] > gaps[0]
    # The same message id on every attempt, a fresh valid signature on each.
    for _, headers, body in receiver.requests:
        assert headers["webhook-id"] == "msg_x"
        assert headers["webhook-signature"] == independent_signature(
            SECRET, "msg_x", headers["webhook-timestamp"], body
        )
        assert json.loads(body) == {"type": "task.completed", "data": {"id": task.id}}
    assert await store.due_webhooks(time.time() + 3600, 1, 10) == []


async def test_receiver_that_recovers_gets_the_delivery(store: TaskStore) -> None:
    async with (
        webhook_receiver(statuses=[503, 500]) as receiver,
        aiohttp.ClientSession() as session,
    ):
        task = await finished_task(store, receiver.url)
        sender = dispatcher(store, session, attempts=5)
        sender.start()
        try:
            done = await wait_state(store, task.id, {"delivered", "failed"})
        finally:
            await sender.stop()
    assert done.webhook is not None and done.webhook.state == "delivered"
    assert [d.status for d in done.webhook.deliveries] == [503, 500, 204]
    assert done.webhook.failure is None and len(receiver.requests) == 3


async def test_unreachable_receiver_is_recorded(store: TaskStore) -> None:
    async with aiohttp.ClientSession() as session:
        task = await finished_task(store, "http://127.0.0.1:9/hook")  # discard port: refused
        sender = dispatcher(store, session, attempts=2)
        sender.start()
        try:
            done = await wait_state(store, task.id, {"failed"})
        finally:
            await sender.stop()
    assert done.webhook is not None
    assert [d.status for d in done.webhook.deliveries] == [None, None]
    assert all(d.error for d in done.webhook.deliveries)
