"""Prompt ids carry their route; the registry picks pods by outstanding work and releases held
requests by broadcast."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy.kube import app_spec
from serverless_comfyui.proxy.registry import (
    App,
    HoldRejectedError,
    HoldTimeoutError,
    PodState,
    Registry,
)


def test_minted_id_is_a_uuid_that_decodes_to_its_route() -> None:
    minted = {ids.mint("flux", "flux-comfyui-abc12") for _ in range(1000)}
    assert len(minted) == 1000
    for prompt_id in minted:
        parsed = uuid.UUID(prompt_id)
        assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
        route = ids.decode(prompt_id)
        assert route == ids.Route(ids.model_hash("flux"), ids.pod_hash("flux-comfyui-abc12"))


def test_foreign_ids_do_not_decode() -> None:
    assert ids.decode(str(uuid.uuid4())) is None
    assert ids.decode("not-a-uuid") is None
    assert ids.decode("") is None


def test_registry_routes_ids_to_pods_and_reports_gone_pods() -> None:
    registry = Registry()
    app = registry.ensure("flux")
    app.set_pod(PodState("p1", "http://127.0.0.2:8188", ready=True))
    app.set_pod(PodState("p2", "http://127.0.0.3:8188", ready=True))
    found = registry.route(ids.mint("flux", "p2"))
    assert found is not None and found[0] is app and found[1] is app.pods["p2"]
    gone = registry.route(ids.mint("flux", "p9"))
    assert gone == (app, None)
    assert registry.route(ids.mint("other", "p1")) is None


def test_pick_prefers_fewest_outstanding_and_avoids_draining() -> None:
    app = App("flux")
    for name, queued in (("a", 3), ("b", 1), ("c", 0)):
        app.set_pod(PodState(name, f"http://{name}", ready=True, queue_remaining=queued))
    app.pods["c"].draining = True
    chosen = app.pick_for_prompt()
    assert chosen is not None and chosen.name == "b"
    app.pods["b"].inflight = 5
    chosen = app.pick_for_prompt()
    assert chosen is not None and chosen.name == "a"
    assert app.outstanding == 3 + 6 + 0


async def test_held_requests_released_by_broadcast_when_a_pod_gets_ready() -> None:
    app = App("flux")
    wakes: list[str] = []

    async def wake(a: App) -> None:
        wakes.append(a.name)

    waiters = [asyncio.create_task(app.wait_for_pod(5, 10, wake)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert app.held == 3 and app.busy
    app.set_pod(PodState("p1", "http://p1", ready=False))
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    app.set_pod(PodState("p1", "http://p1", ready=True))
    pods = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert [p.name for p in pods] == ["p1", "p1", "p1"]
    assert app.held == 0
    assert wakes == ["flux"] * 3


async def test_holds_are_bounded_in_time_and_count() -> None:
    app = App("flux")

    async def wake(a: App) -> None:
        return None

    with pytest.raises(HoldTimeoutError):
        await app.wait_for_pod(0.1, 10, wake)
    assert app.held == 0
    first = asyncio.create_task(app.wait_for_pod(5, 1, wake))
    await asyncio.sleep(0.01)
    with pytest.raises(HoldRejectedError):
        await app.wait_for_pod(5, 1, wake)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert app.held == 0


def test_the_generation_api_learns_each_applications_library_workflow() -> None:
    """A FluxWorkflow serving `warmup` gets `warmup` from /v1/generate when the request names
    no workflow (not the API's default Flux workflow); a ConfigMap workflow gives none."""
    registry = Registry()
    registry.ensure("real").spec = app_spec("ns", {"workflow": {"name": "warmup"}})
    registry.ensure("custom").spec = app_spec(
        "ns", {"workflow": {"configMapRef": {"name": "w", "key": "workflow.json"}}}
    )
    assert registry.workflow_of("real") == "warmup"
    assert registry.workflow_of("custom") is None
    assert registry.workflow_of("unknown") is None
