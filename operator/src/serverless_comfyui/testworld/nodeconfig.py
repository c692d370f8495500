"""The files a real node runs from, all under its folder in the world's state dir: containerd's
config (root, state and socket of its own), the CNI bridge config, the kubelet's config and
kubeconfig, and `enter.sh`, which sets up the node's private mount namespace."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serverless_comfyui.testworld import cgroups
from serverless_comfyui.testworld.netns import KUBERNETES_CLUSTER_IP, NodeNetwork
from serverless_comfyui.testworld.nodes import GPU_TAINT

# The host-wide sysctls the kubelet writes (kubelet/cm: setupKernelTunables, and the keyring
# limits): it sees copies of them, bind-mounted in its private mount namespace.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Fixed paths the node's programs use outside their configurable folders (shim sockets under
# /run/containerd/s, pod netns files under /run/netns, the CNI cache, the device plugin socket,
# /var/log/containers links): private tmpfs mounts in the node's mount namespace.
MASKED_DIRS = ("/run", "/var/log", "/var/lib/cni")
# The kubelet's root dir as it sees it: the node folder's kubelet/ bind-mounted there (sockets
# under it need a short path; the device plugin socket's path is fixed).
KUBELET_ROOT = "/var/lib/kubelet"


def run_dir(short: str) -> Path:
    """The folder of a node's sockets: unix socket paths have at most 104 characters here, too
    few for a folder under pytest's tmp_path (the shims' sockets live in the node's private
    /run)."""
    return Path("/tmp") / short


@dataclass(frozen=True)
class NodeFiles:
    root: Path
    short: str  # scui-<id>: the netns, the cgroup and the socket folder are named after it

    @property
    def socket(self) -> Path:
        return run_dir(self.short) / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    def path(self, name: str) -> Path:
        return self.root / name


def write_enter_script(files: NodeFiles, cgroup: str) -> Path:
    """enter.sh [--private-mounts] CMD...: joins the node's cgroup; with --private-mounts (run
    under `unshare --mount --propagation private`) also masks MASKED_DIRS with tmpfs and
    bind-mounts copies of KUBELET_SYSCTLS; then execs CMD."""
    sysctl_dir = files.path("sysctl")
    binds = []
    for name in KUBELET_SYSCTLS:
        copy = sysctl_dir / name.replace("/", ".")
        binds.append(f"cat /proc/sys/{name} > {copy}\nmount --bind {copy} /proc/sys/{name}")
    masks = [f"mkdir -p {d} && mount -t tmpfs -o mode=755 scui-node {d}" for d in MASKED_DIRS]
    masks.append(f"mkdir -p {KUBELET_ROOT} && mount --bind {files.kubelet_dir} {KUBELET_ROOT}")
    script = "\n".join(
        [
            "#!/bin/sh",
            "set -eu",
            cgroups.join_commands(cgroup),
            'if [ "${1:-}" = --private-mounts ]; then',
            "shift",
            f"mkdir -p {sysctl_dir}",
            *binds,
            *masks,
            "fi",
            'exec "$@"',
            "",
        ]
    )
    path = files.path("enter.sh")
    path.write_text(script)
    path.chmod(0o755)
    return path


def containerd_config(files: NodeFiles, sandbox_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{files.path("containerd/root")}"
state = "{files.path("containerd/state")}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{files.socket}"
[ttrpc]
  address = "{files.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{files.path("containerd/opt")}"
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{files.path("cni")}"
  max_conf_num = 1
"""


def cni_config(files: NodeFiles, net: NodeNetwork) -> str:
    """A bridge in the node's namespace; pods get routes to their range, to our /30 and to the
    `kubernetes` Service's ClusterIP (answered in the node's namespace: netns.py) only."""
    link = net.host_ip.rsplit(".", 1)[0] + ".0/30"
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": net.pod_cidr}]],
            "routes": [{"dst": link}, {"dst": f"{KUBERNETES_CLUSTER_IP}/32"}],
            "dataDir": str(files.path("cni-ipam")),
        },
    }
    return json.dumps({"cniVersion": "0.4.0", "name": net.netns, "plugins": [bridge]}, indent=2)


def kubelet_config(files: NodeFiles, net: NodeNetwork, cgroup: str) -> str:
    """The kubelet's config. The kubelet listens on the node IP inside our namespace only; the
    apiserver connects without client credentials, so it allows anonymous requests."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup}",
        "containerRuntimeEndpoint": f"unix://{files.socket}",
        "enforceNodeAllocatable": [],
        "address": net.node_ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "registerWithTaints": [GPU_TAINT],
        "podLogsDir": str(files.path("pod-logs")),
        "resolvConf": "",
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "oomScoreAdj": 0,
        "serializeImagePulls": False,
    }
    return json.dumps(config, indent=2)


def kubeconfig(server: str, ca: Path, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testworld",
                    "cluster": {"server": server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": "node", "user": {"token": token}}],
            "contexts": [{"name": "node", "context": {"cluster": "testworld", "user": "node"}}],
            "current-context": "node",
        },
        indent=2,
    )


def host_sysctls() -> dict[str, str]:
    """The host's values of the sysctls the kubelet would write (they must never change)."""
    return {name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS}
