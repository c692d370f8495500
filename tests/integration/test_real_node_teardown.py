"""A real node leaves nothing behind (no process naming its folder, no mount under it, no
network namespace, veth or cgroup of ours, the host's sysctls unchanged): after a clean stop,
when the process that started it is SIGKILLed (the janitor cleans up), and from the folder alone
when the janitor was killed too (the teardown that runs at start over a stale folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serverless_comfyui.testworld import TestWorld, find_tools_bin
from serverless_comfyui.testworld.nodeconfig import host_sysctls
from serverless_comfyui.testworld.nodeteardown import leftovers, teardown

pytestmark = pytest.mark.cluster

# Starts a world with a real node and a running container on it (so that there is a shim and a
# container process to clean up), prints the node's description, then sleeps until killed.
STARTER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from serverless_comfyui.testworld import TestWorld
    world = TestWorld(state_dir=Path(sys.argv[1]), pod_cidr=sys.argv[2], pod_runner=False,
                      real_nodes=1)
    world.start(timeout=300)
    node = world.nodes[0]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"}, "spec": {
        "nodeName": node.name, "terminationGracePeriodSeconds": 1,
        "tolerations": [{"operator": "Exists"}], "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": node.images["busybox"].name,
                        "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}
    assert world.kubectl("apply", "-f", "-", input=json.dumps(pod)).returncode == 0
    ready = world.kubectl("wait", "--for=condition=Ready", "--timeout=180s", "pod/sleeper")
    assert ready.returncode == 0, ready.stderr
    print(json.dumps(node.describe()), flush=True)
    time.sleep(600)
    """
)


def _start(tmp_path: Path, pod_cidr: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {**os.environ, "SERVERLESS_COMFYUI_TOOLS_BIN": str(find_tools_bin())}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "world"), pod_cidr],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert starter.stdout is not None
    line = starter.stdout.readline()
    if not line:
        starter.wait()
        pytest.fail(f"the starter exited ({starter.returncode}) before its node was up")
    return starter, json.loads(line)


def _wait_clean(folder: Path, timeout: float = 90.0) -> list[str]:
    """Leftovers of the node in folder once they are gone, or after timeout (polled: teardown
    runs in another process and has no event to watch)."""
    deadline = time.monotonic() + timeout
    found = leftovers(folder)
    while found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = leftovers(folder)
    return found


def test_clean_stop_leaves_nothing(tmp_path: Path) -> None:
    sysctls = host_sysctls()
    world = TestWorld(
        state_dir=tmp_path / "world", pod_cidr="127.76.0.0/16", pod_runner=False, real_nodes=1
    )
    world.start(timeout=300)
    folder = world.nodes[0].files.root
    try:
        assert leftovers(folder) != []  # it did create something
    finally:
        world.stop()
    assert leftovers(folder) == []
    assert host_sysctls() == sysctls


def test_killed_starter_leaves_nothing(tmp_path: Path) -> None:
    sysctls = host_sysctls()
    starter, node = _start(tmp_path, "127.77.0.0/16")
    folder = Path(str(node["folder"]))
    assert any(item.startswith("process") for item in leftovers(folder))
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    assert _wait_clean(folder) == []
    assert host_sysctls() == sysctls


def test_teardown_from_the_folder_alone(tmp_path: Path) -> None:
    """The janitor is killed too: what the node left is found from its folder and removed, as
    RealNode.start does over a stale folder."""
    sysctls = host_sysctls()
    starter, node = _start(tmp_path, "127.78.0.0/16")
    folder = Path(str(node["folder"]))
    os.kill(int(str(node["janitorPid"])), signal.SIGKILL)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    stale = leftovers(folder)
    assert any(item.startswith("netns") for item in stale), stale
    assert teardown(folder) == []
    assert leftovers(folder) == []
    assert host_sysctls() == sysctls
