"""A real Kubernetes node in the test world: containerd + runc + the CNI bridge + the kubelet, in a
network namespace of our own, registered with the world's control plane as `real-h100-<i>` and
advertising 8 fake `nvidia.com/gpu` (no device plugin, no GPU: pods that ask for GPUs are
scheduled and run as ordinary containers).

Layout: everything lives in `<state>/node-<name>/` (node.json records the namespace, veth and
cgroup; see nodeteardown). containerd and the kubelet share one private mount namespace
(enter.sh: tmpfs over the fixed paths they use, copies of the sysctls the kubelet writes), so
nothing they mount is visible on the host and it all goes away with their processes. A janitor
process tears the node down when the world stops or when the process that started it dies."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from serverless_comfyui.testworld import cgroups
from serverless_comfyui.testworld.images import LocalImage, build_local_images, import_image
from serverless_comfyui.testworld.netns import NodeNetwork, create_network, plan_network
from serverless_comfyui.testworld.nodeconfig import (
    KUBELET_ROOT,
    NodeFiles,
    cni_config,
    containerd_config,
    kubeconfig,
    kubelet_config,
    write_enter_script,
)
from serverless_comfyui.testworld.nodes import H100_PRODUCT, REAL_NODE_PREFIX, gpu_labels
from serverless_comfyui.testworld.nodeteardown import mounts_under, teardown
from serverless_comfyui.testworld.processes import ManagedProcess, pipe, rss, wait_until

REAL_NODE_GPUS = 8
REQUIRED = ("containerd", "runc", "ctr", "ip", "nsenter", "unshare", "podman", "gcc")


def real_node_name(index: int) -> str:
    return f"{REAL_NODE_PREFIX}h100-{index}"


@dataclass
class ControlPlane:
    """What a real node needs from the world: the apiserver, its CA, tokens, tools."""

    api_port: int
    ca: Path
    admin_kubeconfig: Path
    tools_bin: Path
    logs: Path


@dataclass
class RealNode:
    name: str
    token: str
    state_dir: Path
    plane: ControlPlane
    processes: list[ManagedProcess] = field(default_factory=list)
    network: NodeNetwork | None = None
    cgroup: str = ""
    images: dict[str, LocalImage] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    _janitor: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _janitor_pipe: IO[bytes] | None = field(default=None, repr=False)

    @property
    def files(self) -> NodeFiles:
        return NodeFiles(self.state_dir / f"node-{self.name}", self.cgroup)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the node's processes (TestWorld then waits for the node to be Ready)."""
        started = self.started_at = time.monotonic()
        check_tools(self.plane.tools_bin)
        root = self.files.root
        teardown(root)  # a stale folder left by a killed run
        root.mkdir(parents=True, exist_ok=True)
        self.images = build_local_images()
        self.timings["images"] = time.monotonic() - started
        node_id = secrets.token_hex(3)
        self.cgroup = f"scui-{node_id}"
        self.network = plan_network(node_id)
        meta = {
            "name": self.name,
            "cgroup": self.cgroup,
            "network": json.loads(self.network.to_json()),
        }
        (root / "node.json").write_text(json.dumps(meta, indent=2))
        self._start_janitor()
        create_network(self.network)
        cgroups.create(self.cgroup)
        self.files.socket.parent.mkdir(mode=0o700)
        self._write_files()
        self._start_processes()
        self.timings["processes"] = time.monotonic() - started

    def stop(self) -> None:
        """Stops the kubelet, containerd and their helpers, then lets the janitor tear the rest
        down (and checks that it did)."""
        for proc in reversed(self.processes):
            proc.stop(grace=10.0)
        self.processes.clear()
        if self._janitor_pipe is not None:
            self._janitor_pipe.close()
            self._janitor_pipe = None
        if self._janitor is not None:
            try:
                self._janitor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._janitor.kill()
            self._janitor = None
        teardown(self.files.root)
        # containerd's content and snapshots: the imported images, unpacked (~11 GB with the
        # ComfyUI image), which pytest would otherwise keep for its last three runs. The logs
        # are in the world's logs folder. Never through a mount that teardown left behind.
        if not mounts_under(self.files.root):
            shutil.rmtree(self.files.path("containerd"), ignore_errors=True)

    def check_alive(self) -> None:
        for proc in self.processes:
            proc.ensure_alive()

    # -- steps -------------------------------------------------------------------------------

    def _start_janitor(self) -> None:
        read_end, write_end = pipe()
        log = (self.plane.logs / f"{self.name}-janitor.log").open("ab")
        self._janitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serverless_comfyui.testworld.janitor",
                f"--node-dir={self.files.root}",
                "--watch-stdin",
            ],
            stdin=read_end,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        read_end.close()
        log.close()
        self._janitor_pipe = write_end

    def _write_files(self) -> None:
        files, net = self.files, self.network
        assert net is not None
        for sub in ("cni", "cni-ipam", "pod-logs", "kubelet", "containerd"):
            files.path(sub).mkdir(parents=True, exist_ok=True)
        files.path("containerd.toml").write_text(
            containerd_config(files, self.images["pause"].name)
        )
        files.path("cni/10-scui.conflist").write_text(cni_config(files, net))
        files.path("kubelet.yaml").write_text(kubelet_config(files, net, self.cgroup))
        server = f"https://127.0.0.1:{self.plane.api_port}"
        files.path("kubelet.kubeconfig").write_text(kubeconfig(server, self.plane.ca, self.token))
        files.path("kubelet.kubeconfig").chmod(0o600)
        write_enter_script(files, self.cgroup)

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(
            f"{self.name}-{name}", args, self.plane.logs / f"{self.name}-{name}.log"
        )
        proc.start()
        self.processes.append(proc)
        return proc

    def _start_processes(self) -> None:
        files, net = self.files, self.network
        assert net is not None
        enter = str(files.path("enter.sh"))
        self._spawn(
            "forwarder",
            [
                sys.executable,
                "-m",
                "serverless_comfyui.testworld.forwarder",
                f"--netns={net.netns_path}",
                f"--port={self.plane.api_port}",
                "--port=443",  # the `kubernetes` Service (netns.KUBERNETES_CLUSTER_IP)
                f"--to=127.0.0.1:{self.plane.api_port}",
            ],
        )
        containerd = self._spawn(
            "containerd",
            [
                "nsenter",
                f"--net={net.netns_path}",
                "--",
                "unshare",
                "--mount",
                "--propagation=private",
                "--",
                enter,
                "--private-mounts",
                "containerd",
                f"--config={files.path('containerd.toml')}",
            ],
        )
        wait_until(lambda: self._containerd_up(containerd), 60, "containerd", interval=0.1)
        for image in self.images.values():
            import_image(image.archive, files.socket)
        self._spawn(
            "kubelet",
            [
                "nsenter",
                f"--target={containerd.pid}",
                "--mount",
                "--net",
                "--",
                enter,
                str(self.plane.tools_bin / "kubelet"),
                f"--config={files.path('kubelet.yaml')}",
                f"--kubeconfig={files.path('kubelet.kubeconfig')}",
                f"--root-dir={KUBELET_ROOT}",  # enter.sh: the node folder's kubelet/
                f"--hostname-override={self.name}",
                f"--node-ip={net.node_ip}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in self._labels().items()),
                "-v=1",
            ],
        )
        self._spawn(
            "gpupatch",
            [
                sys.executable,
                "-m",
                "serverless_comfyui.testworld.gpupatch",
                f"--kubeconfig={self.plane.admin_kubeconfig}",
                f"--node={self.name}",
                f"--gpus={REAL_NODE_GPUS}",
            ],
        )

    def _labels(self) -> dict[str, str]:
        return {
            **gpu_labels(H100_PRODUCT, REAL_NODE_GPUS),
            "serverless-comfyui.io/real-node": "true",
        }

    def _containerd_up(self, proc: ManagedProcess) -> bool:
        proc.ensure_alive()
        result = subprocess.run(
            ["ctr", f"--address={self.files.socket}", "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    # -- observations ------------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """Resident memory in bytes of the kubelet and containerd, and of the node's cgroup."""
        usage: dict[str, int] = {}
        for proc in self.processes:
            short = proc.name.removeprefix(f"{self.name}-")
            if short in ("kubelet", "containerd") and proc.pid is not None:
                usage[short] = rss(proc.pid)
        path = cgroups.CGROUP_FS / "memory" / self.cgroup / "memory.usage_in_bytes"
        if path.exists():
            usage["cgroup"] = int(path.read_text())
        return usage

    def describe(self) -> dict[str, Any]:
        net = self.network
        return {
            "name": self.name,
            "folder": str(self.files.root),
            "netns": net.netns if net else None,
            "nodeIP": net.node_ip if net else None,
            "podCIDR": net.pod_cidr if net else None,
            "cgroup": self.cgroup,
            "janitorPid": self._janitor.pid if self._janitor else None,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


class MissingNodeToolError(RuntimeError):
    pass


def check_tools(tools_bin: Path) -> None:
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        raise MissingNodeToolError(
            f"a real node needs {', '.join(missing)}: run scripts/ensure-container-tools.sh"
        )
    if not (tools_bin / "kubelet").exists():
        raise MissingNodeToolError(f"a real node needs {tools_bin / 'kubelet'}: run `make tools`")
