"""The test world leaves no process behind: not after a clean stop, and not when the process that
started it is killed outright (as when pytest itself crashes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from serverless_comfyui.testworld import TestWorld, find_tools_bin
from serverless_comfyui.testworld.processes import group_members

STARTER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from serverless_comfyui.testworld import TestWorld
    world = TestWorld(state_dir=Path(sys.argv[1]), pod_cidr="127.67.0.0/16")
    world.start()
    print(json.dumps([p.pid for p in world.processes]), flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_all_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid) or group_members(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_killed_starter_takes_the_world_with_it(tmp_path: Path) -> None:
    env = {**os.environ, "SERVERLESS_COMFYUI_TOOLS_BIN": str(find_tools_bin())}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "world")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 6  # etcd, apiserver, controller-manager, scheduler, kwok, pod runner
        assert all(_alive(pid) for pid in pids)
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    assert _wait_all_gone(pids, timeout=10) == []


def test_clean_stop_leaves_nothing(tmp_path: Path) -> None:
    world = TestWorld(state_dir=tmp_path / "world", pod_cidr="127.68.0.0/16", pod_runner=False)
    world.start()
    pids = [p.pid for p in world.processes if p.pid is not None]
    assert len(pids) == 5
    assert world.kubectl("get", "nodes").returncode == 0
    world.stop()
    assert _wait_all_gone(pids, timeout=5) == []
    assert world.processes == []
