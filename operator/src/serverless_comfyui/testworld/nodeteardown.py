"""Teardown of a real node from its folder alone (node.json says what was created): kill every
process of ours (our cgroups, our network namespace, anything whose command line names the
node's folder: containerd shims re-parent to init and leave our process group), unmount what is
mounted under the folder, delete the veth and the namespace, remove the cgroups. Idempotent, so
it runs at start over a stale folder, at stop, and in the janitor (janitor.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from serverless_comfyui.testworld import cgroups
from serverless_comfyui.testworld.netns import NodeNetwork, delete_network, netns_pids
from serverless_comfyui.testworld.nodeconfig import run_dir

log = logging.getLogger("nodeteardown")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def pids_naming(text: str) -> set[int]:
    """Live processes whose command line contains text."""
    found = set()
    needle = text.encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if needle in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
    return found


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or under folder in our mount namespace, deepest first."""
    prefix = str(folder)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _our_pids(node_dir: Path, cgroup: str, net: NodeNetwork) -> set[int]:
    named = pids_naming(str(node_dir)) | pids_naming(str(run_dir(cgroup)))
    return (cgroups.pids(cgroup) | set(netns_pids(net)) | named) - _ancestors()


def kill_ours(node_dir: Path, cgroup: str, net: NodeNetwork, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    left = _our_pids(node_dir, cgroup, net)
    while left and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        left = {p for p in _our_pids(node_dir, cgroup, net) if not _zombie(p)}
    return left


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def teardown(node_dir: Path) -> list[str]:
    """Removes everything node_dir's node created; returns what could not be removed."""
    try:
        meta = json.loads((node_dir / "node.json").read_text())
    except (OSError, ValueError):
        return []
    net = NodeNetwork(**meta["network"])
    problems = [f"process {pid}" for pid in kill_ours(node_dir, meta["cgroup"], net)]
    for point in mounts_under(node_dir):
        result = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if result.returncode != 0:
            problems.append(f"mount {point}")
    delete_network(net)
    shutil.rmtree(run_dir(meta["cgroup"]), ignore_errors=True)
    problems += [f"cgroup {path}" for path in cgroups.remove(meta["cgroup"])]
    if problems:
        log.warning("teardown of %s left: %s", node_dir, ", ".join(problems))
    return problems


def leftovers(node_dir: Path) -> list[str]:
    """What of node_dir's node is still there (empty after a complete teardown): processes
    naming the folder or in our cgroups, mounts under it, our netns and veth, our cgroups."""
    meta = json.loads((node_dir / "node.json").read_text())
    net = NodeNetwork(**meta["network"])
    found = [
        f"process {pid}: {_cmdline(pid)}"
        for pid in sorted(_our_pids(node_dir, meta["cgroup"], net))
        if not _zombie(pid)
    ]
    found += [f"mount {point}" for point in mounts_under(node_dir)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    found += [
        f"netns {net.netns}"
        for line in netns.stdout.splitlines()
        if line.split()[:1] == [net.netns]
    ]
    link = subprocess.run(["ip", "link", "show", net.host_if], capture_output=True, check=False)
    if link.returncode == 0:
        found.append(f"link {net.host_if}")
    if run_dir(meta["cgroup"]).exists():
        found.append(f"folder {run_dir(meta['cgroup'])}")
    found += [
        f"cgroup {h / meta['cgroup']}"
        for h in cgroups.hierarchies()
        if (h / meta["cgroup"]).exists()
    ]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"
