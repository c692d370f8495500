"""Activity shared between proxy replicas.

Held requests, open WebSocket/UI sessions, prompts submitted but not yet reported by their pod,
and the time of the last request live in each replica's memory. Each replica publishes them per
model in an annotation of its own Lease `<lease_name>-<identity>` (label
`serverless-comfyui.io/activity-of=<lease_name>`):

    {"flux": {"held": 0, "sessions": 1, "outstandingLocal": 0,
              "lastActivity": "2026-01-01T12:00:00.000000Z"}}

written within a second of a count changing, at most every 2 s while only `lastActivity` moves
(it is "now" while the model is busy), and at least every 5 s as a heartbeat. Every replica
watches all of them; the leader merges them. The counts of a replica whose Lease has not changed
for PEER_STALE_SECONDS are ignored (it is gone: its connections died with it); its lastActivity
is kept, so a restarted leader neither forgets recent activity nor restarts the idle delay.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.proxy.kubeapi import KubeApi, Reflector, micro_time, parse_time, time_now
from serverless_comfyui.proxy.lease import lease_path
from serverless_comfyui.proxy.registry import App, Registry

log = structlog.get_logger("serverless_comfyui.proxy.activity")

ACTIVITY_ANNOTATION = "serverless-comfyui.io/activity"
ACTIVITY_LABEL = "serverless-comfyui.io/activity-of"
PUBLISH_TICK_SECONDS = 0.5
MOVING_PUBLISH_SECONDS = 2.0
"""How often a replica rewrites its Lease while only lastActivity moves (a busy model)."""
HEARTBEAT_SECONDS = 5.0
PEER_STALE_SECONDS = 15.0
GARBAGE_SECONDS = 3600.0
"""Activity Leases unchanged for this long (and longer than every delay) are deleted."""


def dns_name(text: str, limit: int = 253) -> str:
    """text as a DNS-1123 name (lowercase alphanumerics and '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:limit].strip("-") or "proxy"


@dataclass(frozen=True)
class Activity:
    """One model's activity, as one replica (or the sum of several) sees it."""

    held: int = 0
    sessions: int = 0
    outstanding_local: int = 0
    """Prompts submitted by the replica that their pod has not reported yet."""
    last_activity: float | None = None
    """Wall-clock seconds of the last request or busy moment; None: never."""

    def wire(self) -> dict[str, Any]:
        last = self.last_activity
        return {
            "held": self.held,
            "sessions": self.sessions,
            "outstandingLocal": self.outstanding_local,
            "lastActivity": None if last is None else micro_time(last),
        }

    @classmethod
    def from_wire(cls, data: Any) -> Activity:
        if not isinstance(data, dict):
            return cls()

        def count(key: str) -> int:
            value = data.get(key)
            return max(0, value) if isinstance(value, int) else 0

        return cls(
            held=count("held"),
            sessions=count("sessions"),
            outstanding_local=count("outstandingLocal"),
            last_activity=parse_time(data.get("lastActivity")),
        )

    def counts(self) -> tuple[int, int, int]:
        return self.held, self.sessions, self.outstanding_local


def latest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


@dataclass
class Peer:
    observed_at: float
    """When this replica last saw the peer's Lease change (monotonic)."""
    renewed: float | None
    activity: dict[str, Activity]


class ActivityBoard:
    """Publishes this replica's activity and keeps everyone else's."""

    def __init__(
        self, api: KubeApi, registry: Registry, namespace: str, lease_name: str, identity: str
    ) -> None:
        self.api = api
        self.registry = registry
        self.namespace = namespace
        self.identity = identity
        self.label = dns_name(lease_name, 63)
        self.lease_name = dns_name(f"{lease_name}-{identity}")
        self.peers: dict[str, Peer] = {}
        """By Lease name, this replica's own Lease excluded."""
        self.synced = asyncio.Event()
        self._born: dict[str, float] = {}
        self._published: dict[str, Activity] = {}
        self._published_at = 0.0
        self._version: str | None = None
        self._loaded = False

    # -- this replica -------------------------------------------------------------------------

    def mark_born(self, app: App) -> None:
        """Discovery just created app: its initial last_activity is not activity."""
        self._born[app.name] = app.last_activity

    def local(self, app: App) -> Activity:
        """This replica's activity for app (lastActivity carried over from what it published
        before, also by its previous incarnation)."""
        now_mono, now = time.monotonic(), time_now()
        last = self._published.get(app.name, Activity()).last_activity
        if self._born.get(app.name) != app.last_activity:
            last = latest(last, now - (now_mono - app.last_activity))
        if app.busy:
            last = now
        inflight = sum(p.inflight for p in app.pods.values() if not p.deleting)
        return Activity(app.held, app.open_sessions, inflight, last)

    # -- the others ---------------------------------------------------------------------------

    def others(self, model: str) -> tuple[Activity, float | None]:
        """(sum of the fresh peers' counts with their latest lastActivity, the latest
        lastActivity of all peers, stale ones included)."""
        held = sessions = outstanding = 0
        fresh_last: float | None = None
        any_last: float | None = None
        now = time.monotonic()
        for peer in self.peers.values():
            seen = peer.activity.get(model)
            if seen is None:
                continue
            any_last = latest(any_last, seen.last_activity)
            if now - peer.observed_at < PEER_STALE_SECONDS:
                held += seen.held
                sessions += seen.sessions
                outstanding += seen.outstanding_local
                fresh_last = latest(fresh_last, seen.last_activity)
        return Activity(held, sessions, outstanding, fresh_last), any_last

    def _on_list(self, items: list[dict[str, Any]]) -> None:
        current = self.peers
        self.peers = {}
        for item in items:
            self._on_event("ADDED", item, current)
        self.synced.set()

    def _on_event(
        self, kind: str, lease: dict[str, Any], previous: dict[str, Peer] | None = None
    ) -> None:
        name = str(lease.get("metadata", {}).get("name", ""))
        if name == self.lease_name:
            if not self._loaded:
                self._adopt(lease)
            return
        if kind == "DELETED":
            self.peers.pop(name, None)
            return
        annotations = lease.get("metadata", {}).get("annotations") or {}
        try:
            raw = json.loads(annotations.get(ACTIVITY_ANNOTATION) or "{}")
        except ValueError:
            raw = {}
        activity = {str(k): Activity.from_wire(v) for k, v in dict(raw).items()}
        renewed = parse_time(lease.get("spec", {}).get("renewTime"))
        known = (previous if previous is not None else self.peers).get(name)
        observed = time.monotonic()
        if known is not None and known.renewed == renewed and known.activity == activity:
            observed = known.observed_at  # a relist of an unchanged Lease: not a sign of life
        self.peers[name] = Peer(observed, renewed, activity)

    def _adopt(self, lease: dict[str, Any]) -> None:
        """What this replica's previous incarnation published (lastActivity only matters)."""
        self._loaded = True
        annotations = lease.get("metadata", {}).get("annotations") or {}
        try:
            raw = json.loads(annotations.get(ACTIVITY_ANNOTATION) or "{}")
        except ValueError:
            raw = {}
        for model, data in dict(raw).items():
            last = Activity.from_wire(data).last_activity
            if last is not None:
                self._published.setdefault(str(model), Activity(last_activity=last))

    # -- publishing ---------------------------------------------------------------------------

    async def run(self) -> None:
        reflector = Reflector(
            self.api,
            lease_path(self.namespace),
            f"{ACTIVITY_LABEL}={self.label}",
            self._on_list,
            self._on_event,
            "activity leases",
        )
        watching = asyncio.create_task(reflector.run())
        try:
            await self.synced.wait()
            self._loaded = True
            while True:
                try:
                    await self.publish()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not publish activity", error=str(exc)[:300])
                await asyncio.sleep(PUBLISH_TICK_SECONDS)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    async def publish(self, force: bool = False) -> bool:
        """Write this replica's activity when it changed (see the module docstring)."""
        activity = {name: self.local(app) for name, app in self.registry.apps.items()}
        since = time.monotonic() - self._published_at
        counts_changed = {k: a.counts() for k, a in activity.items()} != {
            k: a.counts() for k, a in self._published.items() if k in self.registry.apps
        } or set(activity) != set(self._published)
        moved = activity != self._published
        due = (
            force
            or counts_changed
            or (moved and since >= MOVING_PUBLISH_SECONDS)
            or since >= HEARTBEAT_SECONDS
        )
        if not due:
            return False
        annotation = json.dumps({k: a.wire() for k, a in sorted(activity.items())})
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.lease_name,
                "namespace": self.namespace,
                "labels": {ACTIVITY_LABEL: self.label},
                "annotations": {ACTIVITY_ANNOTATION: annotation},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(PEER_STALE_SECONDS),
                "renewTime": micro_time(),
            },
        }
        try:
            await self.api.merge_patch(lease_path(self.namespace, self.lease_name), body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.api.request("post", lease_path(self.namespace), body)
        self._published = activity
        self._published_at = time.monotonic()
        return True

    async def collect_garbage(self, longest_delay: float) -> None:
        """Delete the activity Leases of replicas long gone (the leader calls this)."""
        limit = max(GARBAGE_SECONDS, longest_delay + 60)
        now = time_now()
        for name, peer in list(self.peers.items()):
            if peer.renewed is not None and now - peer.renewed > limit:
                try:
                    await self.api.request("delete", lease_path(self.namespace, name))
                    log.info("deleted the activity lease of a gone replica", lease=name)
                except ApiException as exc:
                    if exc.status != 404:
                        log.warning("could not delete a stale activity lease", lease=name)
