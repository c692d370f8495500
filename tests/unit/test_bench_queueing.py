"""The routing benchmark's offline queueing models and arrival trace (pure logic, no timing)."""

from __future__ import annotations

import math
import statistics

import pytest

from serverless_comfyui.bench import queueing


def test_central_fifo_starts_each_prompt_on_the_first_idle_server() -> None:
    # Two servers: 0 and 1 start at once; 2 waits for the first to finish (t=2), 3 for the
    # next (t=3); the last arrives to an idle server.
    arrivals = [0.0, 0.0, 1.0, 1.0, 10.0]
    services = [2.0, 3.0, 1.0, 1.0, 1.0]
    assert queueing.central_fifo(arrivals, services, 2) == [0.0, 0.0, 1.0, 2.0, 0.0]


def test_round_robin_ignores_how_busy_a_server_is() -> None:
    # Server 0 gets prompts 0 and 2; the long prompt 0 makes prompt 2 wait although server 1
    # is idle by then.
    arrivals = [0.0, 0.0, 1.0, 1.5]
    services = [5.0, 1.0, 1.0, 1.0]
    assert queueing.round_robin(arrivals, services, 2) == [0.0, 0.0, 4.0, 0.0]
    assert queueing.central_fifo(arrivals, services, 2) == [0.0, 0.0, 0.0, 0.5]


def test_least_outstanding_counts_prompts_not_their_length() -> None:
    arrivals = [0.0, 0.0, 1.0, 1.5]
    services = [5.0, 1.0, 1.0, 1.0]
    # Prompt 2 sees one unfinished prompt on server 0 and none on server 1 (done at t=1);
    # prompt 3 sees one on each and takes the lowest index, whose prompt runs until t=5, where
    # the central queue would have started it at t=2 (wait 0.5).
    assert queueing.least_outstanding(arrivals, services, 2) == [0.0, 0.0, 0.0, 3.5]


def test_waits_come_back_in_the_order_the_arrivals_were_given() -> None:
    arrivals = [1.0, 0.0]
    services = [1.0, 4.0]
    for model in (queueing.central_fifo, queueing.round_robin, queueing.least_outstanding):
        assert model(arrivals, services, 1) == [3.0, 0.0], model.__name__


def test_one_service_time_per_arrival() -> None:
    with pytest.raises(ValueError):
        queueing.central_fifo([0.0, 1.0], [1.0], 1)


def test_the_ideal_is_never_worse_on_a_random_trace() -> None:
    trace = queueing.day_trace(7, 60.0, 4, 0.02)
    services = [steps * 0.02 for steps in trace.steps]
    ideal = statistics.fmean(queueing.central_fifo(trace.arrivals, services, 4))
    for model in (queueing.round_robin, queueing.least_outstanding):
        assert statistics.fmean(model(trace.arrivals, services, 4)) >= ideal


def test_day_trace_is_deterministic_and_follows_the_load_curve() -> None:
    a = queueing.day_trace(1, 200.0, 6, 0.025)
    assert a == queueing.day_trace(1, 200.0, 6, 0.025)
    assert a != queueing.day_trace(2, 200.0, 6, 0.025)
    assert a.arrivals == sorted(a.arrivals)
    assert all(0 <= t < 200.0 for t in a.arrivals)
    assert len(a.steps) == len(a.arrivals)
    assert {s for s, _ in queueing.STEP_MIX} >= set(a.steps)
    # Expected count: mean utilization (low + high) / 2 x pods / mean duration x length.
    service = queueing.mean_steps() * 0.025
    expected = (0.35 + 0.9) / 2 * 6 / service * 200.0
    assert abs(len(a.arrivals) - expected) < 4 * math.sqrt(expected)
    # More arrivals around noon than around midnight.
    noon = sum(1 for t in a.arrivals if 75 <= t < 125)
    night = sum(1 for t in a.arrivals if t < 25 or t >= 175)
    assert noon > night


def test_utilization_curve() -> None:
    assert queueing.utilization_at(0, 100, 0.2, 0.8) == pytest.approx(0.2)
    assert queueing.utilization_at(50, 100, 0.2, 0.8) == pytest.approx(0.8)
    assert queueing.utilization_at(100, 100, 0.2, 0.8) == pytest.approx(0.2)


def test_mean_steps() -> None:
    assert queueing.mean_steps([(10, 1.0), (30, 1.0)]) == 20
    assert queueing.mean_steps() == pytest.approx(0.15 * 4 + 0.25 * 20 + 0.45 * 28 + 0.15 * 50)
