"""A small JSON client over kubernetes_asyncio for the proxy's control path: plain dicts in and
out (like the operator's `controller.kube`), and a reflector that lists then watches a
collection, relisting after errors and `410 Gone`, never polling."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

log = structlog.get_logger("serverless_comfyui.proxy.kube")

REQUEST_TIMEOUT_SECONDS = 10.0
WATCH_SECONDS = 240
"""Server-side timeout of one watch request; the reflector then watches again from where it
stopped (no relist)."""
RELIST_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class GoneError(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


async def load_api_client() -> client.ApiClient:
    """In-cluster configuration when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    configuration = client.Configuration()
    if "KUBERNETES_SERVICE_HOST" in os.environ:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def micro_time(epoch: float | None = None) -> str:
    """A metav1.MicroTime (RFC 3339 with microseconds, UTC)."""
    moment = datetime.fromtimestamp(time_now() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def time_now() -> float:
    return datetime.now(UTC).timestamp()


class KubeApi:
    """GET/POST/PUT/PATCH/DELETE of JSON objects by URL path."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data = await self.api_client.call_api(
            path,
            method.upper(),
            path_params={},
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            response_types_map={200: "object", 201: "object", 202: "object"},
            _return_http_data_only=True,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        return data if isinstance(data, dict) else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("get", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("patch", path, body, "application/merge-patch+json")

    async def watch(
        self, path: str, resource_version: str, **query: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events of one watch request, until the server ends it."""
        params = {
            **query,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        # A silent dead connection ends too: the server closes every watch after WATCH_SECONDS.
        timeout = aiohttp.ClientTimeout(
            sock_connect=REQUEST_TIMEOUT_SECONDS, sock_read=WATCH_SECONDS + 30
        )
        response = await self.api_client.call_api(
            path,
            "GET",
            path_params={},
            query_params=list(params.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        try:
            if response.status != 200:
                text = await response.text()
                if response.status == 410:
                    raise GoneError(text)
                raise ApiException(status=response.status, reason=text[:300])
            while line := await response.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise GoneError(obj.get("message", "gone"))
                    raise ApiException(status=obj.get("code", 0), reason=obj.get("message"))
                yield str(kind), obj
        finally:
            response.close()  # an unfinished watch: drop the connection, never reuse it


class Reflector:
    """Keeps a local view of one collection (`path` + label selector): an initial list handed
    to `on_list`, then every change to `on_event(type, object)`. Survives apiserver restarts,
    dropped connections and expired resource versions by listing again."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        selector: str,
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        what: str,
    ) -> None:
        self.api = api
        self.path = path
        self.selector = selector
        self.on_list = on_list
        self.on_event = on_event
        self.what = what
        self.synced = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        query = {"labelSelector": self.selector} if self.selector else {}
        while True:
            try:
                listing = await self.api.request("get", self.path, query=query)
                version = str(listing.get("metadata", {}).get("resourceVersion", ""))
                self.on_list(list(listing.get("items") or []))
                self.synced.set()
                failures = 0
                while True:
                    async for kind, obj in self.api.watch(self.path, version, **query):
                        version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                        if kind != "BOOKMARK":
                            self.on_event(kind, obj)
            except asyncio.CancelledError:
                raise
            except GoneError:
                log.info("watch expired; relisting", what=self.what)
            except Exception as exc:
                delay = RELIST_BACKOFF_SECONDS[min(failures, len(RELIST_BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning(
                    "watch interrupted; relisting",
                    what=self.what,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
