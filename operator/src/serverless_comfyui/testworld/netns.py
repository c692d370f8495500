"""The network of a real node: a network namespace of our own (`scui-<id>`), a veth pair into it
(host end `scuih-<id>` in the root namespace, `eth0` inside) with addresses from a /30 of
10.203.0.0/16, and the pods' range (10.244.<slot>.0/24, CNI bridge + host-local inside the
namespace). The host gets a route to the pods' range through our veth and nothing else; the
namespace has no default route, so nothing in it can send traffic beyond the host end of the veth.
The `kubernetes` Service's ClusterIP (KUBERNETES_CLUSTER_IP) is an address of the namespace's
loopback, where the node's forwarder answers for the apiserver: in-cluster clients (the operator
and proxy pods) find the apiserver where Kubernetes tells them to, with no kube-proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import subprocess
from dataclasses import asdict, dataclass

# The first address of the world's Service range (controlplane.SERVICE_CIDR): the apiserver
# gives it to the `kubernetes` Service and lists it in its certificate.
KUBERNETES_CLUSTER_IP = "10.96.0.1"


@dataclass(frozen=True)
class NodeNetwork:
    netns: str
    host_if: str
    host_ip: str
    node_ip: str
    pod_cidr: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def contains(self, address: str | None) -> bool:
        """address is a pod IP from this node's range."""
        return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(
            self.pod_cidr
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeNetwork:
        return cls(**json.loads(text))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _used_slots() -> set[int]:
    """Slots whose host address already exists (another world's veth)."""
    out = ip("-o", "-4", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("10.203."):
                with contextlib.suppress(ValueError, IndexError):
                    used.add(int(word.split(".")[2]))
    return used


def plan_network(node_id: str) -> NodeNetwork:
    """Addresses for node_id: a slot picked from its hash, skipping slots in use."""
    used = _used_slots()
    start = int(hashlib.sha256(node_id.encode()).hexdigest(), 16) % 250
    slot = next(s for s in ((start + i) % 250 + 1 for i in range(250)) if s not in used)
    return NodeNetwork(
        netns=f"scui-{node_id}",
        host_if=f"scuih-{node_id}",
        host_ip=f"10.203.{slot}.1",
        node_ip=f"10.203.{slot}.2",
        pod_cidr=f"10.244.{slot}.0/24",
    )


def create_network(net: NodeNetwork) -> None:
    peer = f"scuin-{net.netns[5:]}"
    ns = ("-n", net.netns)
    ip("netns", "add", net.netns)
    ip("link", "add", net.host_if, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", net.netns)
    ip(*ns, "link", "set", peer, "name", "eth0")
    ip("addr", "add", f"{net.host_ip}/30", "dev", net.host_if)
    ip(*ns, "addr", "add", f"{net.node_ip}/30", "dev", "eth0")
    ip("link", "set", net.host_if, "up")
    ip(*ns, "link", "set", "eth0", "up")
    ip(*ns, "link", "set", "lo", "up")
    ip(*ns, "addr", "add", f"{KUBERNETES_CLUSTER_IP}/32", "dev", "lo")
    ip("route", "add", net.pod_cidr, "via", net.node_ip, "dev", net.host_if)


def delete_network(net: NodeNetwork) -> None:
    """Idempotent: removes our veth (both ends, and the host route with it) and the namespace."""
    ip("link", "del", net.host_if, check=False)
    ip("netns", "del", net.netns, check=False)


def netns_pids(net: NodeNetwork) -> list[int]:
    out = ip("netns", "pids", net.netns, check=False).stdout
    return [int(word) for word in out.split() if word.isdigit()]
