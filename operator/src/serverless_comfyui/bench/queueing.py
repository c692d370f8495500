"""Pure queueing models for the routing benchmark: the arrival trace of a simulated day and the
queue waits of dispatch policies over it, computed offline.

- `central_fifo`: the ideal the proxy is measured against, an M/G/c queue with one central FIFO
  (each prompt starts on the first pod to become idle, in arrival order);
- `round_robin`: prompt i to pod i mod c, FIFO on each pod;
- `least_outstanding`: each prompt to the pod with the fewest prompts queued or running at its
  arrival (ties: the lowest index), FIFO on each pod, i.e. the proxy's rule with perfect
  knowledge and no delays.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

STEP_MIX: tuple[tuple[int, float], ...] = (
    (4, 0.15),  # FLUX.1-schnell
    (20, 0.25),  # FLUX.1-dev, quick
    (28, 0.45),  # FLUX.1-dev, the usual
    (50, 0.15),  # FLUX.1-dev, high quality
)
"""(sampler steps, share of prompts): the spread of prompt durations, steps x seconds a step."""


@dataclass(frozen=True)
class Trace:
    arrivals: list[float]
    """Seconds from the start, increasing."""
    steps: list[int]
    """Sampler steps of each prompt."""


def mean_steps(mix: Sequence[tuple[int, float]] = STEP_MIX) -> float:
    total = sum(share for _, share in mix)
    return sum(steps * share for steps, share in mix) / total


def utilization_at(t: float, length: float, low: float, high: float) -> float:
    """A day's load curve: `low` at midnight (t=0 and t=length), `high` at noon."""
    return low + (high - low) * (1 - math.cos(2 * math.pi * t / length)) / 2


def day_trace(
    seed: int,
    length: float,
    pods: int,
    step_seconds: float,
    low: float = 0.35,
    high: float = 0.9,
    mix: Sequence[tuple[int, float]] = STEP_MIX,
) -> Trace:
    """Poisson arrivals whose rate follows `utilization_at` (offered load per pod, from the mean
    prompt duration), over `length` seconds; steps drawn from `mix`. Deterministic per seed."""
    rng = random.Random(seed)
    service = mean_steps(mix) * step_seconds
    peak_rate = max(low, high) * pods / service
    arrivals: list[float] = []
    t = 0.0
    while True:  # thinning: a homogeneous process at the peak rate, kept with rate(t)/peak
        t += rng.expovariate(peak_rate)
        if t >= length:
            break
        rate = utilization_at(t, length, low, high) * pods / service
        if rng.random() < rate / peak_rate:
            arrivals.append(t)
    choices = [steps for steps, _ in mix]
    weights = [share for _, share in mix]
    steps = rng.choices(choices, weights, k=len(arrivals))
    return Trace(arrivals, steps)


def central_fifo(arrivals: Sequence[float], services: Sequence[float], servers: int) -> list[float]:
    """Queue waits with one FIFO queue in front of `servers` identical servers."""
    free = [0.0] * servers  # a heap of the times each server becomes idle
    waits = [0.0] * len(arrivals)
    for index in _arrival_order(arrivals, services):
        idle_at = heapq.heappop(free)
        start = max(arrivals[index], idle_at)
        waits[index] = start - arrivals[index]
        heapq.heappush(free, start + services[index])
    return waits


def round_robin(arrivals: Sequence[float], services: Sequence[float], servers: int) -> list[float]:
    """Queue waits when prompt i (in arrival order) goes to server i mod `servers`."""
    idle_at = [0.0] * servers
    waits = [0.0] * len(arrivals)
    for rank, index in enumerate(_arrival_order(arrivals, services)):
        server = rank % servers
        start = max(arrivals[index], idle_at[server])
        waits[index] = start - arrivals[index]
        idle_at[server] = start + services[index]
    return waits


def least_outstanding(
    arrivals: Sequence[float], services: Sequence[float], servers: int
) -> list[float]:
    """Queue waits when each prompt goes to the server with the fewest unfinished prompts at
    its arrival (ties: the lowest index), FIFO on each server."""
    unfinished: list[list[float]] = [[] for _ in range(servers)]  # end times, in FIFO order
    waits = [0.0] * len(arrivals)
    for index in _arrival_order(arrivals, services):
        arrival = arrivals[index]
        for ends in unfinished:
            while ends and ends[0] <= arrival:
                ends.pop(0)
        ends = min(unfinished, key=len)  # min keeps the first (lowest index) of equals
        start = max(arrival, ends[-1]) if ends else arrival
        waits[index] = start - arrival
        ends.append(start + services[index])
    return waits


def _arrival_order(arrivals: Sequence[float], services: Sequence[float]) -> list[int]:
    if len(arrivals) != len(services):
        raise ValueError("one service time per arrival")
    return sorted(range(len(arrivals)), key=lambda i: arrivals[i])
