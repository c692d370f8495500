"""The autoscaler's stateful helpers without a cluster: the two-phase drain (mark, settle, write)
and the merge of activity published by other proxy replicas."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from serverless_comfyui.proxy.activity import PEER_STALE_SECONDS, Activity, ActivityBoard, Peer
from serverless_comfyui.proxy.drain import DELETION_COST, DRAINING, Drainer, PodView
from serverless_comfyui.proxy.registry import App, PodState, Registry


class FakeCluster:
    def __init__(self, app: App, views: list[PodView]) -> None:
        self.app = app
        self.views = {v.name: v for v in views}
        self.patches: list[tuple[str, dict[str, str | None]]] = []

    def pod_views(self, app: App) -> list[PodView]:
        return list(self.views.values())

    async def annotate_pod(self, app: App, pod: str, annotations: dict[str, str | None]) -> None:
        self.patches.append((pod, annotations))
        view = self.views[pod]
        merged = {**view.annotations, **annotations}
        clean = {k: v for k, v in merged.items() if v is not None}
        self.views[pod] = PodView(view.name, outstanding=view.outstanding, annotations=clean)


async def test_drain_marks_then_waits_the_settle_time_then_gives_the_count() -> None:
    app = App("flux")
    cluster = FakeCluster(app, [PodView("a", outstanding=2), PodView("b"), PodView("c")])
    drainer = Drainer(cluster, settle_seconds=0.2)
    assert await drainer.scale_down(app, current=3, target=1) is None
    assert dict(cluster.patches) == {
        "a": {DELETION_COST: "2"},
        "b": {DELETION_COST: "-1", DRAINING: "true"},
        "c": {DELETION_COST: "-1", DRAINING: "true"},
    }
    assert await drainer.scale_down(app, 3, 1) is None  # settling: nothing re-patched
    assert len(cluster.patches) == 3
    await asyncio.sleep(0.2)
    assert await drainer.scale_down(app, 3, 1) == 1
    drainer.committed(app)
    # Changing its mind right after: the victims being removed keep their marks.
    await drainer.cancel(app)
    assert len(cluster.patches) == 3


async def test_drain_replans_when_a_victim_gets_work_and_cancel_unmarks() -> None:
    app = App("flux")
    cluster = FakeCluster(app, [PodView("a", outstanding=1), PodView("b")])
    drainer = Drainer(cluster, settle_seconds=0.0)
    assert await drainer.scale_down(app, 2, 0) is None
    assert cluster.views["b"].annotations[DRAINING] == "true"
    # A prompt slipped onto the victim: no pod is idle, no lower count is safe.
    cluster.views["b"] = PodView("b", outstanding=1, annotations=cluster.views["b"].annotations)
    assert await drainer.scale_down(app, 2, 0) is None
    assert cluster.patches[-1] == ("b", {DRAINING: None})
    assert DRAINING not in cluster.views["b"].annotations


def board_with(peers: dict[str, Peer]) -> ActivityBoard:
    board = ActivityBoard(
        api=None, registry=Registry(), namespace="ns", lease_name="l", identity="me"
    )  # type: ignore[arg-type]
    board.peers = peers
    return board


def test_fresh_peers_add_their_counts_stale_ones_only_their_last_activity() -> None:
    now = time.monotonic()
    fresh = Peer(
        now, None, {"flux": Activity(held=2, sessions=1, outstanding_local=3, last_activity=100.0)}
    )
    stale = Peer(
        now - PEER_STALE_SECONDS - 1,
        None,
        {"flux": Activity(held=5, sessions=5, outstanding_local=5, last_activity=200.0)},
    )
    board = board_with({"l-a": fresh, "l-b": stale})
    counts, any_last = board.others("flux")
    assert counts.counts() == (2, 1, 3)
    assert counts.last_activity == 100.0
    assert any_last == 200.0
    assert board.others("other") == (Activity(), None)


def test_local_activity_ignores_the_birth_of_an_app_and_counts_busy_as_now() -> None:
    registry = Registry()
    board = board_with({})
    board.registry = registry
    app = registry.ensure("flux")
    board.mark_born(app)
    assert board.local(app).last_activity is None
    app.set_pod(PodState("p", "http://p", ready=True, queue_remaining=1))
    busy: Any = board.local(app)
    assert busy.last_activity is not None and abs(busy.last_activity - time.time()) < 1
    app.pods["p"].queue_remaining, app.pods["p"].inflight = 0, 2
    assert board.local(app).outstanding_local == 2
