"""A real Kubernetes control plane on loopback, without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK (which plays the nodes), plus our pod runner
(which plays the kubelet for ComfyUI pods). Used by the pytest fixture and by `make up`."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from serverless_comfyui.testworld.nodes import FAKE_NODE_ANNOTATION, fake_nodes
from serverless_comfyui.testworld.processes import ManagedProcess, free_port, wait_until
from serverless_comfyui.testworld.realcomfy import MissingComfyUIError, find_comfyui_home
from serverless_comfyui.testworld.realnode import ControlPlane, RealNode, real_node_name

TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
# Service ClusterIPs come from this range. Only the `kubernetes` Service's is ever connected to,
# from real nodes (netns.KUBERNETES_CLUSTER_IP).
SERVICE_CIDR = "10.96.0.0/16"


class MissingToolError(RuntimeError):
    pass


def find_tools_bin() -> Path:
    """The directory holding the tools built by `make tools`."""
    env = os.environ.get("SERVERLESS_COMFYUI_TOOLS_BIN")
    candidates = [Path(env)] if env else []
    here = Path.cwd().resolve()
    candidates += [p / ".tools" / "bin" for p in (here, *here.parents)]
    for candidate in candidates:
        if all((candidate / tool).exists() for tool in TOOLS):
            return candidate
    raise MissingToolError(
        "the test world needs etcd, kube-apiserver, kube-controller-manager, kube-scheduler, "
        "kubectl and kwok in .tools/bin: run `make tools` (or set SERVERLESS_COMFYUI_TOOLS_BIN)"
    )


@dataclass
class TestWorld:
    """Starts and stops the whole test world under state_dir."""

    state_dir: Path
    pod_cidr: str = "127.66.0.0/16"
    node_ip: str = "127.62.0.1"
    tools_bin: Path = field(default_factory=find_tools_bin)
    pod_runner: bool = True
    comfyui: str = "emulator"
    """What ComfyUI pods run unless annotated otherwise: the emulator, or `real` (realcomfy.py)."""
    comfyui_home: Path | None = None
    """The real ComfyUI (`make comfyui-env`); found in .tools/comfyui when not given."""
    real_nodes: int = 0  # real kubelet nodes (realnode.py), besides the KWOK fakes
    processes: list[ManagedProcess] = field(default_factory=list)
    nodes: list[RealNode] = field(default_factory=list)
    server: str = field(default="", init=False)

    __test__ = False  # not a pytest test class

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def tool(self, name: str) -> str:
        return str(self.tools_bin / name)

    def _comfyui_home_args(self) -> list[str]:
        """The real ComfyUI for the pod runner: required when it is the default, else optional
        (pods may still ask for it by annotation)."""
        home = self.comfyui_home
        if home is None:
            try:
                home = find_comfyui_home()
            except MissingComfyUIError:
                if self.comfyui == "real":
                    raise
                return []
        return [f"--comfyui-home={home}"]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        (self.state_dir / "world.json").write_text(
            json.dumps(
                {
                    "kubeconfig": str(self.kubeconfig),
                    "server": self.server,
                    "podCIDR": self.pod_cidr,
                    "pids": {p.name: p.pid for p in self.processes},
                    "realNodes": [node.describe() for node in self.nodes],
                    "startSeconds": round(time.monotonic() - started, 2),
                },
                indent=2,
            )
        )

    def stop(self) -> None:
        """Stops every process, newest first (the pod runner and its emulators before KWOK,
        the apiserver before etcd); real nodes first."""
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
        for proc in reversed(self.processes):
            proc.stop(grace=10.0)
        self.processes.clear()

    def check_alive(self) -> None:
        for proc in self.processes:
            proc.ensure_alive()
        for node in self.nodes:
            node.check_alive()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        proc = ManagedProcess(name, args, self.logs / f"{name}.log", env=env)
        proc.start()
        self.processes.append(proc)

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pki = self.state_dir / "pki"
        pki.mkdir(exist_ok=True)
        self._write_service_account_key(pki)
        token = secrets.token_hex(16)
        node_tokens = {real_node_name(i): secrets.token_hex(16) for i in range(self.real_nodes)}
        (pki / "tokens.csv").write_text(
            f'{token},admin,admin,"system:masters"\n'
            + "".join(f'{t},system:node:{n},{n},"system:nodes"\n' for n, t in node_tokens.items())
        )

        etcd_port, etcd_peer = free_port(), free_port()
        data = self.state_dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        self._spawn(
            "etcd",
            [
                self.tool("etcd"),
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health"), deadline, "etcd")

        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                self.tool("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={pki / 'tokens.csv'}",
                # The apiserver would publish its loopback address in the `kubernetes` Endpoints,
                # which Kubernetes refuses for loopback IPs.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--allow-privileged=true",
                # Real nodes: reach their kubelet (logs, exec) at the node IP, never by name.
                "--kubelet-preferred-address-types=InternalIP",
                "-v=1",
            ],
        )
        ca = pki / "apiserver.crt"
        self._wait(
            lambda: http_ok(f"{self.server}/readyz", ca=ca, token=token), deadline, "apiserver"
        )
        self._write_kubeconfig(ca, token)

        kubeconfig = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                self.tool("kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "-v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [self.tool("kube-scheduler"), *common, f"--secure-port={free_port()}", "-v=1"],
        )
        stages = resources.files("serverless_comfyui.testworld").joinpath("stages.yaml")
        stages_path = self.state_dir / "kwok-stages.yaml"
        stages_path.write_text(stages.read_text())
        self._spawn(
            "kwok",
            [
                self.tool("kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={stages_path}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--cidr={self.pod_cidr}",
                f"--node-ip={self.node_ip}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        if self.pod_runner:
            self._spawn(
                "pod-runner",
                [
                    sys.executable,
                    "-m",
                    "serverless_comfyui.testworld.podrunner",
                    f"--kubeconfig={kubeconfig}",
                    f"--state-dir={self.state_dir / 'pods'}",
                    f"--comfyui={self.comfyui}",
                    *self._comfyui_home_args(),
                ],
            )
        nodes = self.state_dir / "nodes.json"
        nodes.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": fake_nodes()}))
        self._wait(
            lambda: self.kubectl("apply", "-f", str(nodes)).returncode == 0, deadline, "nodes"
        )
        self._wait(self._nodes_ready, deadline, "fake nodes to become Ready")
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default").returncode == 0,
            deadline,
            "the default ServiceAccount",
        )
        if node_tokens:
            plane = ControlPlane(api_port, ca, self.kubeconfig, self.tools_bin, self.logs)
            self._start_real_nodes(plane, node_tokens, deadline)

    def _start_real_nodes(
        self, plane: ControlPlane, tokens: dict[str, str], deadline: float
    ) -> None:
        """Starts the real nodes and waits (at least 120 s) until they are Ready."""
        for name, token in tokens.items():
            node = RealNode(name, token, self.state_dir, plane)
            self.nodes.append(node)
            node.start()
        ready_by = max(deadline, time.monotonic() + 120)
        for node in self.nodes:
            self._wait(functools.partial(self._node_ready, node.name), ready_by, f"{node.name}")
            node.timings["ready"] = time.monotonic() - node.started_at

    def _node_ready(self, name: str) -> bool:
        out = self.kubectl(
            "get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        )
        return out.stdout.strip() == "True"

    def _wait(self, check: object, deadline: float, what: str) -> None:
        def probe() -> bool:
            self.check_alive()
            return bool(check())  # type: ignore[operator]

        remaining = max(1.0, deadline - time.monotonic())
        try:
            wait_until(probe, remaining, what, interval=0.2)
        except TimeoutError as exc:
            procs = [*self.processes, *(p for node in self.nodes for p in node.processes)]
            logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in procs)
            raise TimeoutError(f"{exc}\n{logs}") from None

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
        )
        statuses = out.stdout.split()
        return len(statuses) == len(fake_nodes()) and all(s == "True" for s in statuses)

    # -- helpers -----------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this world; never raises on a non-zero exit."""
        return subprocess.run(
            [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _write_service_account_key(self, pki: Path) -> None:
        key, pub = pki / "sa.key", pki / "sa.pub"
        if key.exists() and pub.exists():
            return
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
            check=True,
            capture_output=True,
        )

    def _write_kubeconfig(self, ca: Path, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testworld",
                    "cluster": {"server": self.server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [
                {"name": "testworld", "context": {"cluster": "testworld", "user": "admin"}}
            ],
            "current-context": "testworld",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)


def http_ok(url: str, ca: Path | None = None, token: str | None = None) -> bool:
    """GET url answers 200 (https: verified against ca, with a bearer token if given)."""
    context = None
    if url.startswith("https"):
        if ca is None or not ca.exists():
            return False
        context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return bool(response.status == 200)
