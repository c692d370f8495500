"""The cgroups of a real node (cgroup v1 hierarchies, as on our machines): `/scui-<id>` in every
hierarchy, `/scui-<id>/node` for containerd, its shims and the kubelet, and the kubelet's
cgroupRoot `/scui-<id>` for the pods. Everything the node starts is inside it, so teardown can
find every process (shims re-parent to init and leave the process group) and remove it all."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def hierarchies() -> list[Path]:
    """The mounted hierarchies: the v1 ones (cpu, memory, pids, name=systemd, ...) and, in hybrid
    mode, the v2 one without controllers at /sys/fs/cgroup/unified (runc creates the containers'
    cgroups there too)."""
    if not CGROUP_FS.is_dir():
        return []
    return [entry for entry in sorted(CGROUP_FS.iterdir()) if (entry / "cgroup.procs").exists()]


def create(name: str) -> None:
    """`/<name>` and `/<name>/node` in every hierarchy (cpuset copies its parent's cpus/mems)."""
    for hierarchy in hierarchies():
        for path in (hierarchy / name, hierarchy / name / "node"):
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    value = (path.parent / knob).read_text().strip()
                    (path / knob).write_text(value)


def join_commands(name: str) -> str:
    """Shell lines that move the current shell ($$) into /<name>/node everywhere."""
    lines = [
        f"echo $$ > {hierarchy / name / 'node' / 'cgroup.procs'}" for hierarchy in hierarchies()
    ]
    return "\n".join(lines)


def _tree(root: Path) -> list[Path]:
    """root and its descendants, deepest first."""
    if not root.is_dir():
        return []
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def pids(name: str) -> set[int]:
    found: set[int] = set()
    for hierarchy in hierarchies():
        for folder in _tree(hierarchy / name):
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
    return found


def kill_all(name: str, timeout: float = 20.0) -> set[int]:
    """SIGKILL every process in our cgroups until none is left; returns those still there."""
    deadline = time.monotonic() + timeout
    left = pids(name)
    while left and time.monotonic() < deadline:
        for pid in left - {os.getpid()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        left = pids(name) - {os.getpid()}
    return left


def remove(name: str, timeout: float = 10.0) -> list[Path]:
    """rmdir our cgroups, deepest first (a cgroup whose last process just died can still be busy
    for a moment); returns the folders that could not be removed."""
    deadline = time.monotonic() + timeout
    left: list[Path] = []
    while True:
        left = []
        for hierarchy in hierarchies():
            for folder in _tree(hierarchy / name):
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(folder)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
