"""The little of ComfyUI's HTTP API the entrypoint needs: is it up, what is queued, submit a
prompt, read its history. Every call has a timeout; errors surface as `ComfyUIError`."""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class ComfyUIError(Exception):
    """ComfyUI did not answer, or answered something unexpected."""


class PromptRejectedError(ComfyUIError):
    """`POST /prompt` answered 400: the graph failed validation."""

    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.body = body


class ComfyUIClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    async def _get_json(self, path: str, limit: float) -> Any:
        try:
            async with self._session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=limit)
            ) as response:
                if response.status != 200:
                    text = await response.text()
                    raise ComfyUIError(f"GET {path}: HTTP {response.status}: {text[:200]}")
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ComfyUIError(f"GET {path}: {_describe(exc)}") from exc

    async def system_stats(self, limit: float = 5.0) -> dict[str, Any]:
        body = await self._get_json("/system_stats", limit)
        if not isinstance(body, dict):
            raise ComfyUIError("GET /system_stats: not a JSON object")
        return body

    async def queue_remaining(self, limit: float = 5.0) -> int:
        """Prompts running plus prompts pending (`GET /queue`)."""
        body = await self._get_json("/queue", limit)
        if not isinstance(body, dict):
            raise ComfyUIError("GET /queue: not a JSON object")
        running = body.get("queue_running") or []
        pending = body.get("queue_pending") or []
        return len(running) + len(pending)

    async def history(self, prompt_id: str, limit: float = 10.0) -> dict[str, Any] | None:
        """The prompt's history entry; None while it is queued or running (ComfyUI: `{}`)."""
        body = await self._get_json(f"/history/{prompt_id}", limit)
        if not isinstance(body, dict):
            raise ComfyUIError("GET /history: not a JSON object")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def submit(
        self, graph: dict[str, Any], prompt_id: str, client_id: str, limit: float = 30.0
    ) -> None:
        payload = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id}
        try:
            async with self._session.post(
                self.base_url + "/prompt",
                json=payload,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyUIError(f"POST /prompt: {_describe(exc)}") from exc
        if status == 200:
            return
        if status == 400:
            body = _json_or_text(text)
            raise PromptRejectedError(describe_rejection(body), body)
        raise ComfyUIError(f"POST /prompt: HTTP {status}: {text[:200]}")

    async def cancel(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the queue and interrupt it if it runs."""
        for path, payload in (
            ("/queue", {"delete": [prompt_id]}),
            ("/interrupt", {"prompt_id": prompt_id}),
        ):
            try:
                async with self._session.post(
                    self.base_url + path, json=payload, timeout=aiohttp.ClientTimeout(total=5)
                ):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                pass


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def describe_rejection(body: Any) -> str:
    """One line from ComfyUI's 400 body: the error message and each node's errors."""
    if not isinstance(body, dict):
        return f"prompt rejected: {str(body)[:300]}"
    error = body.get("error")
    parts: list[str] = []
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("type") or "invalid prompt")
        details = str(error.get("details") or "")
        parts.append(f"{message} ({details})" if details else message)
    elif error:
        parts.append(str(error))
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            class_type = info.get("class_type", "?")
            for item in info.get("errors") or []:
                if isinstance(item, dict):
                    text = str(item.get("message", ""))
                    if item.get("details"):
                        text += f": {item['details']}"
                    parts.append(f"node {node_id} ({class_type}): {text}")
    return "; ".join(parts) or "prompt rejected"


def describe_execution_failure(entry: dict[str, Any]) -> str:
    """Why a finished prompt failed, from its history entry's status messages."""
    status = entry.get("status")
    messages = status.get("messages") if isinstance(status, dict) else None
    for item in messages or []:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            continue
        kind, data = item
        if kind == "execution_error" and isinstance(data, dict):
            node = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
            exc_type = data.get("exception_type", "error")
            exc_message = str(data.get("exception_message", "")).strip()
            return f"{node}: {exc_type}: {exc_message}"
        if kind == "execution_interrupted":
            return "execution interrupted"
    status_str = status.get("status_str") if isinstance(status, dict) else None
    return f"execution ended with status {status_str or 'unknown'}"
