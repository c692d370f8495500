"""Least privilege, as the API server sees it: after `helm install`, `kubectl auth can-i --list`
for the operator's and the proxy's ServiceAccounts must show exactly the permissions each needs
(nothing more, nothing missing) in the namespaces they serve, and nothing in the others."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serverless_comfyui.testworld import TestWorld

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "serverless-comfyui"
RELEASE = "serverless-comfyui"

Grant = tuple[str, str, str]  # (resource.group[/subresource], resource names, verb)


def grants(table: dict[str, str]) -> set[Grant]:
    return {(resource, "", verb) for resource, verbs in table.items() for verb in verbs.split()}


# What the operator needs in each namespace it serves (see templates/_rbac.tpl for why).
OPERATOR_NAMESPACED = grants(
    {
        "fluxworkflows.serverless-comfyui.io": "get list watch patch",
        "fluxworkflows.serverless-comfyui.io/status": "get patch",
        "fluxworkflows.serverless-comfyui.io/finalizers": "update",
        "deployments.apps": "get list watch create patch delete",
        "jobs.batch": "get list watch create patch delete",
        "configmaps": "get create patch delete",
        "services": "get create patch delete",
        "pods": "list watch",
        "secrets": "get",
        "persistentvolumeclaims": "get",
        "events": "create",
    }
)
# kopf's discovery, cluster-scoped (shows in every namespace).
OPERATOR_DISCOVERY = grants({"customresourcedefinitions.apiextensions.k8s.io": "list watch"})
OPERATOR_NAMESPACES = grants({"namespaces": "list watch"})  # namespaced mode only
PROXY_NAMESPACED = grants(
    {
        "fluxworkflows.serverless-comfyui.io": "get list watch",
        "fluxworkflows.serverless-comfyui.io/scale": "get patch update",
        "pods": "get list watch patch",
        "events": "create",
    }
)
PROXY_LEASES = grants({"leases.coordination.k8s.io": "get list watch create update patch delete"})

ROW = re.compile(r"^(\S*)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def helm(world: TestWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [world.tool("helm"), f"--kubeconfig={world.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def can_i(world: TestWorld, user: str, namespace: str) -> set[Grant]:
    """`kubectl auth can-i --list` as a set of (resource, resource names, verb)."""
    done = world.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace)
    assert done.returncode == 0, done.stderr
    found: set[Grant] = set()
    lines = done.stdout.splitlines()
    assert lines and lines[0].split()[0] == "Resources", done.stdout
    for line in lines[1:]:
        match = ROW.match(line)
        assert match, f"unexpected can-i line: {line!r}"
        resource, urls, names, verbs = match.groups()
        if urls:
            resource = f"url:{urls}"
        for verb in verbs.split():
            found.add((resource, names, verb))
    return found


@dataclass
class Install:
    namespace: str
    other: str  # a namespace the release does not serve
    baseline: set[Grant]  # what any authenticated ServiceAccount may do

    def account(self, name: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{RELEASE}-{name}"


def install(world: TestWorld, crd: Path, *args: str) -> Iterator[Install]:
    suffix = uuid.uuid4().hex[:8]
    namespace, other = f"rbac-{suffix}", f"rbac-{suffix}-other"
    for name in (namespace, other):
        assert world.kubectl("create", "namespace", name).returncode == 0
    done = helm(world, "install", RELEASE, str(CHART), "-n", namespace, *args)
    assert done.returncode == 0, done.stderr
    nobody = f"system:serviceaccount:{namespace}:nobody"
    try:
        yield Install(namespace, other, can_i(world, nobody, namespace))
    finally:
        helm(world, "uninstall", RELEASE, "-n", namespace)
        for name in (namespace, other):
            world.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def namespaced(world: TestWorld, crd: Path) -> Iterator[Install]:
    # The devpod and the default FluxWorkflow do not matter here.
    yield from install(world, crd, "--set", "devpod.enabled=false", "--set", "model.enabled=false")


@pytest.fixture
def cluster_wide(world: TestWorld, crd: Path) -> Iterator[Install]:
    yield from install(
        world, crd, "--set", "rbac.clusterWide=true", "--set", "devpod.enabled=false",
        "--set", "model.enabled=false",
    )  # fmt: skip


def extra(granted: set[Grant], allowed: set[Grant], baseline: set[Grant]) -> set[Grant]:
    return granted - allowed - baseline


def test_baseline_is_only_self_review_and_discovery(namespaced: Install) -> None:
    """The reference the other tests subtract: nothing but self-reviews and public URLs."""
    for resource, _, verb in namespaced.baseline:
        assert resource.startswith("url:") or resource.startswith("selfsubject"), resource
        assert verb in ("get", "create")


def test_operator_has_exactly_what_it_needs(world: TestWorld, namespaced: Install) -> None:
    user = namespaced.account("operator")
    allowed = OPERATOR_NAMESPACED | OPERATOR_DISCOVERY | OPERATOR_NAMESPACES
    granted = can_i(world, user, namespaced.namespace)
    more = extra(granted, allowed, namespaced.baseline)
    assert not more, f"more than needed: {sorted(more)}"
    assert allowed <= granted, f"missing: {sorted(allowed - granted)}"
    # Elsewhere only kopf's cluster-scoped discovery.
    elsewhere = can_i(world, user, namespaced.other) - namespaced.baseline
    assert elsewhere == OPERATOR_DISCOVERY | OPERATOR_NAMESPACES


def test_proxy_has_exactly_what_it_needs(world: TestWorld, namespaced: Install) -> None:
    user = namespaced.account("proxy")
    allowed = PROXY_NAMESPACED | PROXY_LEASES
    granted = can_i(world, user, namespaced.namespace)
    more = extra(granted, allowed, namespaced.baseline)
    assert not more, f"more than needed: {sorted(more)}"
    assert allowed <= granted, f"missing: {sorted(allowed - granted)}"
    assert can_i(world, user, namespaced.other) - namespaced.baseline == set()


def test_devpod_and_default_accounts_get_nothing(world: TestWorld, namespaced: Install) -> None:
    for name in ("devpod", "default"):
        user = f"system:serviceaccount:{namespaced.namespace}:{name}"
        assert can_i(world, user, namespaced.namespace) == namespaced.baseline


def test_cluster_wide_operator_and_proxy(world: TestWorld, cluster_wide: Install) -> None:
    operator = cluster_wide.account("operator")
    proxy = cluster_wide.account("proxy")
    for namespace in (cluster_wide.namespace, cluster_wide.other):
        granted = can_i(world, operator, namespace) - cluster_wide.baseline
        assert granted == OPERATOR_NAMESPACED | OPERATOR_DISCOVERY, namespace
    assert can_i(world, proxy, cluster_wide.namespace) - cluster_wide.baseline == (
        PROXY_NAMESPACED | PROXY_LEASES
    )
    # The Leases stay in the release namespace.
    assert can_i(world, proxy, cluster_wide.other) - cluster_wide.baseline == PROXY_NAMESPACED


def test_a_token_of_the_account_works_for_a_local_process(
    world: TestWorld, namespaced: Install
) -> None:
    """`make up` runs the proxy on the host with the chart's ServiceAccount token."""
    ns = namespaced.namespace
    token = world.kubectl("create", "token", f"{RELEASE}-proxy", "-n", ns)
    assert token.returncode == 0, token.stderr
    as_proxy = ("--token", token.stdout.strip(), "--user", "")
    allowed = world.kubectl(*as_proxy, "get", "fluxworkflows", "-n", ns)
    assert allowed.returncode == 0, allowed.stderr
    refused = world.kubectl(*as_proxy, "get", "secrets", "-n", ns)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
