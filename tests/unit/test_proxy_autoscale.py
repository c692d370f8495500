"""The autoscaler's pure rules: desired replicas from demand, delays (time injected), the drain
plan, and the activity shared between replicas."""

from __future__ import annotations

import pytest

from serverless_comfyui.proxy.activity import Activity, dns_name
from serverless_comfyui.proxy.autoscaler import Decision, Demand, Limits, Window, decide
from serverless_comfyui.proxy.drain import DrainPlan, PodView, plan_scale_down

T0 = 1_700_000_000.0
LIMITS = Limits(min_replicas=0, max_replicas=4, target_requests=2, scale_down_delay=30)


def run(
    current: int,
    demand: Demand,
    now: float,
    window: Window | None = None,
    limits: Limits = LIMITS,
) -> Decision:
    return decide(current, limits, demand, window, now)


@pytest.mark.parametrize(
    ("held", "outstanding", "expected"),
    [(1, 0, 1), (0, 2, 1), (1, 2, 2), (3, 4, 4), (0, 50, 4)],
)
def test_scale_up_at_once_to_ceil_demand_over_target_clamped(
    held: int, outstanding: int, expected: int
) -> None:
    demand = Demand(held=held, outstanding=outstanding, last_activity=T0)
    decision = run(0, demand, T0)
    assert decision.replicas == expected
    assert decision.window is None


def test_min_replicas_kept_and_busy_means_at_least_one() -> None:
    limits = Limits(min_replicas=2, max_replicas=4, target_requests=5, scale_down_delay=30)
    assert run(0, Demand(), T0, limits=limits).replicas == 2
    assert run(2, Demand(), T0 + 10_000, limits=limits).replicas == 2
    # An open WebSocket with nothing queued: one warm pod, even from zero.
    assert run(0, Demand(sessions=1), T0).replicas == 1
    assert run(1, Demand(sessions=1), T0 + 10_000).replicas == 1


def test_recent_activity_keeps_a_running_app_but_never_wakes_one() -> None:
    # A GET /history at 0 replicas touches the app: that is no reason to start a GPU.
    assert run(0, Demand(last_activity=T0), T0 + 1).replicas == 0
    assert run(1, Demand(last_activity=T0), T0 + 29.9).replicas == 1


def test_to_zero_exactly_scale_down_delay_after_the_last_activity() -> None:
    idle = Demand(last_activity=T0)
    assert run(1, idle, T0 + 29.99).replicas == 1
    assert run(1, idle, T0 + 30).replicas == 0
    # The delay is not counted twice for a bigger app: 3 -> 0 straight after 30 s idle.
    assert run(3, idle, T0 + 30).replicas == 0
    # Never while busy, however old the last request.
    for busy in (Demand(held=1), Demand(outstanding=1), Demand(sessions=1)):
        assert run(1, Demand(**{**busy.__dict__, "last_activity": T0}), T0 + 999).replicas == 1
    # Never any activity at all (e.g. scaled up by hand): nothing to wait for.
    assert run(1, Demand(), T0).replicas == 0


def test_scale_down_to_nonzero_waits_for_the_delay_and_takes_the_peak() -> None:
    # 4 pods, demand falls to 2 prompts (desired 1) while requests keep coming.
    window = None
    decisions = []
    for second, outstanding in ((0, 2), (10, 4), (20, 2), (29, 2), (30, 2), (31, 2)):
        demand = Demand(outstanding=outstanding, last_activity=T0 + second)
        decision = run(4, demand, T0 + second, window)
        window = decision.window
        decisions.append(decision.replicas)
    # Lower since T0; the peak desired meanwhile was 2 (4 prompts / 2 per pod).
    assert decisions == [4, 4, 4, 4, 2, 2]
    assert window == Window(replicas=4, since=T0, peak=2)


def test_a_rise_resets_the_window_and_a_new_count_starts_a_new_one() -> None:
    first = run(3, Demand(outstanding=2, last_activity=T0), T0)
    assert first.window == Window(3, T0, 1)
    rise = run(3, Demand(outstanding=6, last_activity=T0 + 5), T0 + 5, first.window)
    assert rise.replicas == 3 and rise.window is None
    # After scaling 3 -> 2 the old window (for 3) does not apply to 2.
    again = run(2, Demand(outstanding=1, last_activity=T0 + 40), T0 + 40, Window(3, T0, 1))
    assert again.replicas == 2 and again.window == Window(2, T0 + 40, 1)


def test_window_survives_the_wire() -> None:
    window = Window(3, T0 + 0.25, 2)
    assert Window.from_wire(window.wire()) == window
    assert Window.from_wire({"replicas": "x"}) is None


def test_plan_removes_idle_pods_first_and_never_below_pods_with_work() -> None:
    pods = [
        PodView("a", outstanding=3),
        PodView("b", outstanding=0),
        PodView("c", outstanding=1),
        PodView("d", outstanding=0),
    ]
    plan = plan_scale_down(pods, 1)
    # Two pods have work: the count stops at 2, and the idle ones go.
    assert plan == DrainPlan(
        replicas=2, victims=("b", "d"), costs={"a": 3, "b": -1, "c": 1, "d": -1}
    )
    assert plan_scale_down(pods, 3).victims == ("b",)
    assert plan_scale_down([PodView("a", outstanding=1)], 0).replicas == 1


def test_plan_follows_the_replicaset_order_and_stops_at_a_busy_pod() -> None:
    # The ReplicaSet removes a not-ready pod before any ready one, whatever the cost: when
    # that pod has work, no lower count is safe.
    pods = [
        PodView("warming", ready=False, outstanding=0),
        PodView("pending", scheduled=False, running=False, ready=False),
        PodView("idle"),
        PodView("busy", outstanding=2),
    ]
    assert plan_scale_down(pods, 1).victims == ("pending", "warming", "idle")
    stuck = [PodView("flapping", ready=False, outstanding=1), PodView("idle")]
    plan = plan_scale_down(stuck, 0)
    assert plan.victims == () and plan.replicas == 2
    # Pods already being deleted are not counted.
    gone = [PodView("old", deleting=True, outstanding=5), PodView("idle")]
    assert plan_scale_down(gone, 0) == DrainPlan(0, ("idle",), {"idle": -1})


def test_activity_wire_format() -> None:
    activity = Activity(held=1, sessions=2, outstanding_local=3, last_activity=T0 + 0.5)
    wire = activity.wire()
    assert wire == {
        "held": 1,
        "sessions": 2,
        "outstandingLocal": 3,
        "lastActivity": "2023-11-14T22:13:20.500000Z",
    }
    assert Activity.from_wire(wire) == activity
    assert Activity.from_wire({"held": -4, "lastActivity": "garbage"}) == Activity()
    assert dns_name("Proxy_Pod.0") == "proxy-pod-0"
