"""The ComfyUI calls the API makes on one pod (ComfyUI 0.8.0's HTTP API)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class PodUnavailableError(Exception):
    """The pod did not answer (connection refused, reset, timeout) or answered 5xx."""


class PromptRejectedError(Exception):
    """ComfyUI refused the prompt (400 with `error` and `node_errors`): not worth a retry."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(str(message or body))


@dataclass(frozen=True)
class Found:
    """Where a prompt is on a pod: `history` (finished; `entry` is its record), `running`,
    `pending` or `absent`."""

    where: str
    entry: dict[str, Any] | None = None


class PodClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _json(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method,
                f"{self.base_url}{path}",
                json=body,
                params=params,
                timeout=self.timeout,
            ) as answer:
                text = await answer.text()
                status = answer.status
        except NETWORK_ERRORS as exc:
            raise PodUnavailableError(f"{method} {path}: {exc or type(exc).__name__}") from exc
        if status >= 500:
            raise PodUnavailableError(f"{method} {path}: HTTP {status}")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        return status, data

    async def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id}
        status, data = await self._json("POST", "/prompt", body=body)
        if status != 200:
            raise PromptRejectedError(status, data)

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history record once it has finished, else None."""
        status, data = await self._json("GET", f"/history/{prompt_id}")
        if status != 200 or not isinstance(data, dict):
            return None
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> tuple[list[str], list[str]]:
        """Ids of the (running, pending) prompts."""
        status, data = await self._json("GET", "/queue")
        if status != 200 or not isinstance(data, dict):
            raise PodUnavailableError(f"GET /queue: HTTP {status}")

        def ids(items: Any) -> list[str]:
            out = []
            for item in items if isinstance(items, list) else []:
                if isinstance(item, list) and len(item) > 1:
                    out.append(str(item[1]))
            return out

        return ids(data.get("queue_running")), ids(data.get("queue_pending"))

    async def find(self, prompt_id: str) -> Found:
        """Where the prompt is. The queue is read before the history so that a prompt that
        finishes in between is still found."""
        running, pending = await self.queue()
        entry = await self.history(prompt_id)
        if entry is not None:
            return Found("history", entry)
        if prompt_id in running:
            return Found("running")
        if prompt_id in pending:
            return Found("pending")
        return Found("absent")

    async def cancel(self, prompt_id: str) -> None:
        """Remove the prompt from the pending queue, and interrupt it if it runs."""
        await self._json("POST", "/queue", body={"delete": [prompt_id]})
        await self._json("POST", "/interrupt", body={"prompt_id": prompt_id})

    async def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        try:
            async with self.session.get(
                f"{self.base_url}/view", params=params, timeout=self.timeout
            ) as answer:
                if answer.status != 200:
                    raise PodUnavailableError(f"GET /view {subfolder}/{filename}: {answer.status}")
                return await answer.read()
        except NETWORK_ERRORS as exc:
            raise PodUnavailableError(f"GET /view: {exc or type(exc).__name__}") from exc

    def websocket(self, client_id: str) -> Any:
        """`async with pod.websocket(cid) as ws:` the pod's event stream for client_id."""
        return self.session.ws_connect(
            f"{self.base_url}/ws",
            params={"clientId": client_id},
            heartbeat=30,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        )


def history_images(
    entry: dict[str, Any], nodes: list[str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """(node id, {filename, subfolder, type}) of the saved images in a history record, in node
    order; `nodes` restricts to those output nodes (None: every node). Temporary previews are
    left out."""
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return []
    wanted = nodes if nodes is not None else sorted(outputs, key=_node_order)
    found: list[tuple[str, dict[str, Any]]] = []
    for node in wanted:
        output = outputs.get(node)
        if not isinstance(output, dict):
            continue
        for key in ("images", "gifs", "videos", "audio"):
            for item in output.get(key) or []:
                if (
                    isinstance(item, dict)
                    and item.get("filename")
                    and item.get("type", "output") == "output"
                ):
                    found.append((node, item))
    return found


def _node_order(node: str) -> tuple[int, str]:
    return (int(node), "") if node.isdigit() else (1 << 62, node)


def history_error(entry: dict[str, Any]) -> tuple[str, str, Any] | None:
    """(type, message, details) of a failed prompt's history record, else None."""
    status = entry.get("status")
    if not isinstance(status, dict) or status.get("status_str") != "error":
        return None
    for message in status.get("messages") or []:
        if not isinstance(message, list) or len(message) < 2:
            continue
        kind, data = message[0], message[1] if isinstance(message[1], dict) else {}
        if kind == "execution_error":
            return "execution_error", _node_error_message(data), _error_details(data)
        if kind == "execution_interrupted":
            return "interrupted", "the prompt was interrupted on the pod", None
    return "execution_error", "ComfyUI reported an error (no details)", None


def _node_error_message(data: dict[str, Any]) -> str:
    node = data.get("node_type") or "a node"
    text = str(data.get("exception_message") or "unknown error").strip()
    return f"{node} (node {data.get('node_id')}) failed: {text}"


def _error_details(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("node_id", "node_type", "exception_type", "exception_message")
    return {k: data.get(k) for k in keys}
