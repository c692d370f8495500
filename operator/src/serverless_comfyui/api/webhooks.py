"""Webhook deliveries, signed per Standard Webhooks (https://www.standardwebhooks.com/).

Each delivery is a POST of a JSON body with the headers

    webhook-id:        msg_<task id>   (the same for every retry of one message)
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

where `key` is the base64-decoded part of the secret `whsec_<base64>` (setting
`webhook_secret`). Receivers verify with any Standard Webhooks library (`standardwebhooks`,
`svix`) or with `verify()` below. A 2xx answer is success; anything else (or no answer within
`webhook_timeout_seconds`) is retried after `initial * 2^(n-1)` seconds (capped), up to
`webhook_max_attempts` attempts. Every attempt is recorded on the task (`webhook.deliveries`),
and so is the final failure (`webhook.state: failed`, `webhook.failure`).

Deliveries are scheduled in the task store (due time per task) together with the task's final
state, and taken with a lease, so a replica that dies mid-delivery leaves it to another.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from serverless_comfyui.api.models import Task, WebhookDelivery
from serverless_comfyui.api.store import StoreError, TaskStore

log = structlog.get_logger("api.webhooks")

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret looks like whsec_<base64> (Standard Webhooks)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError as exc:
        raise ValueError(f"the webhook secret is not valid base64 after {SECRET_PREFIX}") from exc
    if len(key) < 16:
        raise ValueError("the webhook secret must hold at least 16 bytes (24-64 recommended)")
    return key


def generate_secret(size: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> bool:
    """Check a delivery's signature and freshness (for receivers written in Python)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = sign(secret_key(secret), message_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def backoff_seconds(failed_attempts: int, initial: float, cap: float) -> float:
    """Delay before the next attempt after `failed_attempts` failures (exponential)."""
    return float(min(cap, initial * (2 ** max(0, failed_attempts - 1))))


async def address_allowed(url: str) -> str | None:
    """None when the URL's host resolves only to public addresses, else why not."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
        ):
            return f"{host!r} resolves to a non-public address ({address})"
    return None


PayloadBuilder = Callable[[Task], Awaitable[dict[str, Any]]]


class WebhookDispatcher:
    """Delivers due webhooks (one loop per replica)."""

    def __init__(
        self,
        store: TaskStore,
        session: aiohttp.ClientSession,
        build_payload: PayloadBuilder,
        *,
        secret: str | None,
        max_attempts: int,
        initial_backoff: float,
        max_backoff: float,
        timeout: float,
        poll_seconds: float,
        block_private: bool = False,
    ) -> None:
        self.store = store
        self.session = session
        self.build_payload = build_payload
        self.key = secret_key(secret) if secret else None
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.block_private = block_private
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self.key is None:
            log.warning("no webhook secret configured: webhook deliveries are not signed")
        self._task = asyncio.create_task(self._loop(), name="api-webhooks")

    def poke(self) -> None:
        """A delivery was just scheduled: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    async def _loop(self) -> None:
        lease = self.timeout + 30.0
        while True:
            try:
                due = await self.store.due_webhooks(time.time(), lease, 32)
            except StoreError as exc:
                log.warning("cannot read due webhooks", error=str(exc))
                due = []
            for task_id in due:
                delivery = asyncio.create_task(self._deliver_logged(task_id))
                self._deliveries.add(delivery)
                delivery.add_done_callback(self._deliveries.discard)
            if not due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                self._wake.clear()

    async def _deliver_logged(self, task_id: str) -> None:
        try:
            await self.deliver(task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery crashed", task_id=task_id)

    async def deliver(self, task_id: str) -> None:
        task = await self.store.get(task_id)
        hook = task.webhook if task is not None else None
        if (
            task is None
            or hook is None
            or not task.terminal
            or hook.state in ("delivered", "failed")
        ):
            await self.store.unschedule_webhook(task_id)
            return
        payload = await self.build_payload(task)
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        message_id = hook.message_id or f"msg_{task.id}"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "serverless-comfyui-webhooks/1",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, message_id, timestamp, body)
        attempt = len(hook.deliveries) + 1
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        refused = await address_allowed(hook.url) if self.block_private else None
        if refused is not None:
            error = f"refused: {refused}"
        else:
            try:
                async with self.session.post(
                    hook.url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    allow_redirects=False,
                ) as answer:
                    status = answer.status
                    await answer.content.read(64 * 1024)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        record = WebhookDelivery(
            attempt=attempt,
            at=time.time(),
            status=status,
            error=error,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        give_up = error is not None and (attempt >= self.max_attempts or refused is not None)
        next_at = (
            None
            if error is None or give_up
            else time.time() + backoff_seconds(attempt, self.initial_backoff, self.max_backoff)
        )

        def apply(current: Task) -> Task | None:
            if current.webhook is None:
                return None
            w = current.webhook
            w.message_id = message_id
            w.deliveries.append(record)
            if error is None:
                w.state, w.next_attempt_at = "delivered", None
            elif give_up:
                w.state, w.next_attempt_at = "failed", None
                w.failure = f"gave up after {attempt} attempt(s); last: {error}"
            else:
                w.state, w.next_attempt_at = "pending", next_at
            return current

        await self.store.update(task_id, apply)
        if next_at is None:
            await self.store.unschedule_webhook(task_id)
        else:
            await self.store.schedule_webhook(task_id, next_at)
        log.info(
            "webhook delivery",
            task_id=task_id,
            attempt=attempt,
            status=status,
            error=error,
            next_attempt_in=None if next_at is None else round(next_at - time.time(), 1),
        )
