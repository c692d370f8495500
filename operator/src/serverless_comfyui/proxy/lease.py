"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

One proxy replica at a time holds the Lease and writes scale decisions; the others keep serving
requests and take over when the holder stops renewing. Expiry is judged by when *this* replica
last saw the Lease change (its own monotonic clock), never by comparing wall clocks across
machines. The holder may keep a small JSON state in an annotation of the Lease (the autoscaler's
pending scale-down windows), which the next holder reads when it takes over.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.proxy.kubeapi import KubeApi, micro_time

log = structlog.get_logger("serverless_comfyui.proxy.lease")

LEASE_DURATION_SECONDS = 10.0
"""A holder that has not renewed for this long (as others observe it) may be replaced."""
RENEW_EVERY_SECONDS = 2.0
"""The holder renews (and the others retry) this often."""
RENEW_DEADLINE_SECONDS = 7.0
"""The holder stops acting when its last successful renewal is older than this (before anyone
may take over, LEASE_DURATION_SECONDS after it)."""
STATE_ANNOTATION = "serverless-comfyui.io/autoscaler-state"


def lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        duration: float = LEASE_DURATION_SECONDS,
        renew_every: float = RENEW_EVERY_SECONDS,
        renew_deadline: float = RENEW_DEADLINE_SECONDS,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = renew_every
        self.renew_deadline = renew_deadline
        self.state: dict[str, Any] = {}
        """Written into the Lease by the holder at each renewal."""
        self.inherited_state: dict[str, Any] = {}
        """The state the previous holder left, read when this replica took over."""
        self.acquired_at: float | None = None
        """When this replica last became the holder (monotonic)."""
        self._renewed_at: float | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return (
            self._renewed_at is not None
            and time.monotonic() - self._renewed_at < self.renew_deadline
        )

    async def run(self) -> None:
        while True:
            try:
                await self.try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease renewal failed", lease=self.name, error=str(exc)[:300])
            if self._renewed_at is not None and not self.is_leader:
                log.warning("leadership lost: renew deadline passed", lease=self.name)
                self._renewed_at = None
            await asyncio.sleep(self.renew_every)

    def _body(self, current: dict[str, Any] | None, now: str) -> dict[str, Any]:
        spec = dict((current or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        annotations = dict((current or {}).get("metadata", {}).get("annotations") or {})
        annotations[STATE_ANNOTATION] = json.dumps(self.state, sort_keys=True)
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "annotations": annotations,
        }
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.duration)),
            renewTime=now,
        )
        if taking_over or not spec.get("acquireTime"):
            spec["acquireTime"] = now
            spec["leaseTransitions"] = transitions + (1 if current is not None else 0)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: create, renew or take over the Lease. True when this replica holds it."""
        current = await self.api.get(lease_path(self.namespace, self.name))
        now_mono = time.monotonic()
        if current is not None:
            spec = current.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, now_mono
            duration = float(spec.get("leaseDurationSeconds") or self.duration)
            if holder and holder != self.identity and now_mono - self._observed_at < duration:
                if self._renewed_at is not None:
                    log.warning("leadership lost", lease=self.name, holder=holder)
                self._renewed_at = None
                return False
        taking_over = self._renewed_at is None
        if taking_over:
            self.inherited_state = _state_of(current)
            self.state = dict(self.inherited_state)
        body = self._body(current, micro_time())
        try:
            if current is None:
                await self.api.request("post", lease_path(self.namespace), body)
            else:
                await self.api.request("put", lease_path(self.namespace, self.name), body)
        except ApiException as exc:
            if exc.status in (409, 422):  # someone else wrote first: try again next round
                self._renewed_at = None
                return False
            raise
        self._renewed_at = now_mono
        if taking_over:
            self.acquired_at = now_mono
            previous = (current or {}).get("spec", {}).get("holderIdentity")
            log.info("became leader", lease=self.name, identity=self.identity, previous=previous)
        return True

    async def release(self) -> None:
        """Give the Lease up at shutdown so that another replica takes over at once."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            current = await self.api.get(lease_path(self.namespace, self.name))
            if current is None or current.get("spec", {}).get("holderIdentity") != self.identity:
                return
            body = self._body(current, micro_time())
            body["spec"]["holderIdentity"] = None
            body["spec"]["leaseDurationSeconds"] = 1
            await self.api.request("put", lease_path(self.namespace, self.name), body)
            log.info("leadership released", lease=self.name, identity=self.identity)
        except Exception as exc:
            log.warning("could not release the lease", lease=self.name, error=str(exc)[:300])


def _state_of(lease: dict[str, Any] | None) -> dict[str, Any]:
    text = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(STATE_ANNOTATION)
    try:
        state = json.loads(text) if text else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}
