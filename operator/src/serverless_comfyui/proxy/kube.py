"""`KubeControl`: the proxy's Kubernetes control path (the `control.Control` of a proxy that is
not in static mode).

- Discovery by watch (architecture decision 8): FluxWorkflows become registry applications
  (`AppSpec` from their spec), their ComfyUI pods become `PodState`s (address from
  `status.podIP` and the container port named `http`, readiness from the Ready condition,
  `deleting` from `deletionTimestamp`, `draining` from the autoscaler's annotation). Pods are
  read from Pods, not EndpointSlices.
- Wake (decision 3): a held request for an application at 0 replicas patches its `scale`
  subresource to max(1, minReplicas). Any replica may do this; concurrent calls share one patch.
- Autoscaling (decisions 1, 5, 6): `autoscaler.Autoscaler`, acting only on the replica that
  holds the Lease (`lease.LeaderElector`), merging every replica's activity
  (`activity.ActivityBoard`), draining before every scale-down (`drain.Drainer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.crd.models import GROUP, KIND, PLURAL, VERSION
from serverless_comfyui.proxy import metrics
from serverless_comfyui.proxy.activity import ActivityBoard
from serverless_comfyui.proxy.autoscaler import Autoscaler
from serverless_comfyui.proxy.drain import DRAINING, Drainer, PodView
from serverless_comfyui.proxy.kubeapi import (
    KubeApi,
    Reflector,
    load_api_client,
    micro_time,
    time_now,
)
from serverless_comfyui.proxy.lease import LeaderElector
from serverless_comfyui.proxy.monitor import PodMonitors
from serverless_comfyui.proxy.registry import App, AppSpec, PodState, Registry
from serverless_comfyui.proxy.settings import ProxySettings

log = structlog.get_logger("serverless_comfyui.proxy.kube")

WORKFLOW_LABEL = "serverless-comfyui.io/workflow"
POD_SELECTOR = (
    "app.kubernetes.io/component=comfyui,app.kubernetes.io/managed-by=serverless-comfyui,"
    f"{WORKFLOW_LABEL}"
)
WAKE_WAIT_SECONDS = 2.0
"""wake() waits this long at most for its patch; the patch goes on in the background."""
DEFAULT_COMFYUI_PORT = 8188


def workflows_path(namespace: str | None = None, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    path = f"{base}/namespaces/{namespace}/{PLURAL}" if namespace else f"{base}/{PLURAL}"
    return f"{path}/{name}" if name else path


def pods_path(namespace: str | None = None, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    return f"{path}/{name}" if name else path


@dataclass
class Pod:
    """A ComfyUI pod as discovery last saw it."""

    namespace: str
    name: str
    workflow: str
    ip: str
    port: int
    ready: bool
    deleting: bool
    scheduled: bool
    running: bool
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> Pod:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            workflow=str((meta.get("labels") or {}).get(WORKFLOW_LABEL, "")),
            ip=str(status.get("podIP") or ""),
            port=_http_port(spec),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            scheduled=bool(spec.get("nodeName")),
            running=status.get("phase") == "Running",
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        )

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def _http_port(spec: dict[str, Any]) -> int:
    containers = spec.get("containers") or [{}]
    ports = containers[0].get("ports") or []
    for port in ports:
        if port.get("name") == "http":
            return int(port["containerPort"])
    return int(ports[0]["containerPort"]) if ports else DEFAULT_COMFYUI_PORT


@dataclass
class Workflow:
    namespace: str
    name: str
    spec: AppSpec
    resource_version: str
    uid: str = ""


def app_spec(namespace: str, spec: dict[str, Any]) -> AppSpec:
    def number(key: str, default: int) -> int:
        value = spec.get(key)
        return value if isinstance(value, int) else default

    return AppSpec(
        namespace=namespace,
        min_replicas=number("minReplicas", 0),
        max_replicas=number("maxReplicas", 1),
        target_requests=max(1, number("targetRequests", 5)),
        scale_down_delay_seconds=float(number("scaleDownDelaySeconds", 30)),
        replicas=number("replicas", 0),
        workflow=_library_workflow(spec.get("workflow")),
    )


def _library_workflow(workflow: Any) -> str | None:
    name = workflow.get("name") if isinstance(workflow, dict) else None
    return name if isinstance(name, str) and name else None


class KubeControl:
    """Discovery, wake and autoscaling against the Kubernetes API."""

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        api_client: client.ApiClient | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.identity = settings.pod_name or socket.gethostname()
        self.on_pods_changed: Callable[[], None] | None = None
        """Called after any change of the registry's pods, besides the queue monitors."""
        self.monitors: PodMonitors | None = None
        self._session: aiohttp.ClientSession | None = None
        self._api_client = api_client
        self._own_client = api_client is None
        self.api: KubeApi | None = None
        self.elector: LeaderElector | None = None
        self.board: ActivityBoard | None = None
        self.autoscaler: Autoscaler | None = None
        self.drainer = Drainer(self)
        self._reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._workflows: dict[str, Workflow] = {}
        self._pods: dict[tuple[str, str], Pod] = {}
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self._scaled_up_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- Control ------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return bool(self._reflectors) and all(r.synced.is_set() for r in self._reflectors)

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    async def start(self) -> None:
        if self._api_client is None:
            self._api_client = await load_api_client()
        self.api = api = KubeApi(self._api_client)
        self._session = aiohttp.ClientSession()
        self.monitors = PodMonitors(self.registry, self._session, replica=self.identity)
        scopes: list[str | None] = list(self.settings.namespaces) or [None]
        for namespace in scopes:
            self._reflectors.append(
                Reflector(
                    api,
                    workflows_path(namespace),
                    "",
                    functools.partial(self._on_workflow_list, namespace),
                    self._on_workflow_event,
                    f"fluxworkflows in {namespace or 'all namespaces'}",
                )
            )
            self._reflectors.append(
                Reflector(
                    api,
                    pods_path(namespace),
                    POD_SELECTOR,
                    functools.partial(self._on_pod_list, namespace),
                    self._on_pod_event,
                    f"comfyui pods in {namespace or 'all namespaces'}",
                )
            )
        lease_ns = self.settings.lease_namespace
        self.elector = LeaderElector(api, lease_ns, self.settings.lease_name, self.identity)
        self.board = ActivityBoard(
            api, self.registry, lease_ns, self.settings.lease_name, self.identity
        )
        self.autoscaler = Autoscaler(
            self.registry,
            self,
            self.drainer,
            self.elector,
            self.board,
            self.settings.autoscale_interval_seconds,
        )
        runs = [r.run() for r in self._reflectors]
        runs += [self.board.run(), self._campaign(self.elector), self.autoscaler.run()]
        self._tasks = [asyncio.create_task(run) for run in runs]
        log.info(
            "kubernetes control started",
            identity=self.identity,
            namespaces=self.settings.namespaces or "all",
            lease=f"{lease_ns}/{self.settings.lease_name}",
        )

    async def _campaign(self, elector: LeaderElector) -> None:
        """Run for leader once discovery is synced (a leader must know what it scales)."""
        await asyncio.gather(*(r.synced.wait() for r in self._reflectors))
        await elector.run()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        self._tasks = []
        for task in self._wakes.values():
            task.cancel()
        await asyncio.gather(*self._wakes.values(), return_exceptions=True)
        if self.board is not None and self.board.synced.is_set():
            with contextlib.suppress(Exception):
                await self.board.publish(force=True)
        if self.elector is not None:
            await self.elector.release()
        if self.monitors is not None:
            await self.monitors.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_client and self._api_client is not None:
            await self._api_client.close()
            self._api_client = None

    async def wake(self, app: App) -> None:
        """Scale a scaled-to-zero application to max(1, minReplicas); returns within
        WAKE_WAIT_SECONDS even if the API server is slow (the patch goes on)."""
        if app.spec.replicas >= 1 or not app.spec.namespace:
            return
        task = self._wakes.get(app.name)
        if task is None or task.done():
            task = asyncio.create_task(self._wake(app))
            self._wakes[app.name] = task
        await asyncio.wait([task], timeout=WAKE_WAIT_SECONDS)

    async def _wake(self, app: App) -> None:
        replicas = max(1, app.spec.min_replicas)
        try:
            written = await self.scale(app, replicas, conditional=False)
        except Exception as exc:  # the next held request or the autoscaler tries again
            log.warning("wake failed", model=app.name, error=str(exc)[:300])
            return
        if written:
            metrics.SCALE_EVENTS.labels(app.name, "up").inc()
            log.info("woke", model=app.name, namespace=app.spec.namespace, replicas=replicas)
            self.record(app, "Woken", f"a request woke the application: 0 -> {replicas} replicas")

    # -- scale (autoscaler.Scaler) -------------------------------------------------------------

    def scaled_up_at(self, model: str) -> float | None:
        return self._scaled_up_at.get(model)

    async def scale(self, app: App, replicas: int, *, conditional: bool) -> bool:
        assert self.api is not None
        namespace = app.spec.namespace
        path = workflows_path(namespace, app.name) + "/scale"
        try:
            if conditional:
                known = self._workflows.get(app.name)
                if known is None:
                    return False
                body = {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {
                        "name": app.name,
                        "namespace": namespace,
                        "resourceVersion": known.resource_version,
                    },
                    "spec": {"replicas": replicas},
                }
                await self.api.request("put", path, body)
            else:
                await self.api.merge_patch(path, {"spec": {"replicas": replicas}})
        except ApiException as exc:
            if exc.status in (404, 409):
                log.info(
                    "scale not written: the FluxWorkflow changed or is gone",
                    model=app.name,
                    replicas=replicas,
                    status=exc.status,
                )
                return False
            raise
        if replicas > app.spec.replicas:
            self._scaled_up_at[app.name] = time_now()
        app.spec.replicas = replicas  # until the watch says so
        return True

    def record(self, app: App, reason: str, message: str) -> None:
        """A Kubernetes Event on the FluxWorkflow (`kubectl describe fw`), in the background."""
        known = self._workflows.get(app.name)
        if self.api is None or known is None:
            return
        task = asyncio.create_task(self._post_event(self.api, known, reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_event(self, api: KubeApi, workflow: Workflow, reason: str, text: str) -> None:
        now = micro_time()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{workflow.name}.", "namespace": workflow.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": workflow.name,
                "namespace": workflow.namespace,
                "uid": workflow.uid,
            },
            "reason": reason,
            "message": text,
            "type": "Normal",
            "source": {"component": "serverless-comfyui-proxy", "host": self.identity},
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
            "reportingComponent": "serverless-comfyui-proxy",
            "reportingInstance": self.identity,
        }
        try:
            await api.request("post", f"/api/v1/namespaces/{workflow.namespace}/events", event)
        except Exception as exc:  # events are best effort
            log.debug("could not post an event", reason=reason, error=str(exc)[:200])

    # -- drain (drain.Cluster) -----------------------------------------------------------------

    def pod_views(self, app: App) -> list[PodView]:
        views = []
        for pod in self._pods.values():
            if pod.workflow != app.name or pod.namespace != app.spec.namespace:
                continue
            state = app.pods.get(pod.name)
            views.append(
                PodView(
                    name=pod.name,
                    scheduled=pod.scheduled,
                    running=pod.running,
                    ready=pod.ready,
                    deleting=pod.deleting,
                    outstanding=state.outstanding if state is not None else 0,
                    annotations=dict(pod.annotations),
                )
            )
        return views

    async def annotate_pod(self, app: App, pod: str, annotations: dict[str, str | None]) -> None:
        assert self.api is not None
        namespace = app.spec.namespace
        await self.api.merge_patch(
            pods_path(namespace, pod), {"metadata": {"annotations": annotations}}
        )
        known = self._pods.get((namespace, pod))
        if known is not None:
            for key, value in annotations.items():
                if value is None:
                    known.annotations.pop(key, None)
                else:
                    known.annotations[key] = value
        state = app.pods.get(pod)
        if state is not None and DRAINING in annotations:
            state.draining = annotations[DRAINING] == "true"

    # -- discovery: FluxWorkflows --------------------------------------------------------------

    def _on_workflow_list(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            seen.add(str(obj.get("metadata", {}).get("name", "")))
            self._on_workflow_event("ADDED", obj)
        for name, known in list(self._workflows.items()):
            if (namespace is None or known.namespace == namespace) and name not in seen:
                self._forget_workflow(name)

    def _on_workflow_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
        known = self._workflows.get(name)
        if known is not None and known.namespace != namespace:
            log.warning(
                "FluxWorkflow name used in two namespaces; serving the first",
                model=name,
                serving=known.namespace,
                ignored=namespace,
            )
            return
        if kind == "DELETED":
            self._forget_workflow(name)
            return
        spec = app_spec(namespace, obj.get("spec") or {})
        version = str(meta.get("resourceVersion", ""))
        if known is not None and spec.replicas > known.spec.replicas:
            self._scaled_up_at[name] = time_now()
        self._workflows[name] = Workflow(namespace, name, spec, version, str(meta.get("uid", "")))
        app = self.registry.get(name)
        if app is None:
            app = self.registry.ensure(name)
            if self.board is not None:
                self.board.mark_born(app)
            log.info("application discovered", model=name, namespace=namespace)
        app.spec = spec
        for pod in self._pods.values():
            if pod.workflow == name and pod.namespace == namespace:
                self._apply_pod(app, pod)
        self._pods_changed()

    def _forget_workflow(self, name: str) -> None:
        self._workflows.pop(name, None)
        self._scaled_up_at.pop(name, None)
        self.drainer.forget(name)
        if self.registry.get(name) is not None:
            self.registry.remove(name)
            log.info("application removed", model=name)
            self._pods_changed()

    # -- discovery: Pods -----------------------------------------------------------------------

    def _on_pod_list(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            meta = obj.get("metadata") or {}
            seen.add((str(meta.get("namespace", "")), str(meta.get("name", ""))))
            self._on_pod_event("ADDED", obj, notify=False)
        for key in list(self._pods):
            if (namespace is None or key[0] == namespace) and key not in seen:
                self._drop_pod(key)
        self._pods_changed()

    def _on_pod_event(self, kind: str, obj: dict[str, Any], notify: bool = True) -> None:
        pod = Pod.parse(obj)
        key = (pod.namespace, pod.name)
        if kind == "DELETED":
            self._drop_pod(key)
        else:
            self._pods[key] = pod
            app = self._app_of(pod)
            if app is not None:
                self._apply_pod(app, pod)
        if notify:
            self._pods_changed()

    def _app_of(self, pod: Pod) -> App | None:
        app = self.registry.get(pod.workflow)
        if app is None or app.spec.namespace != pod.namespace:
            return None
        return app

    def _apply_pod(self, app: App, pod: Pod) -> None:
        if not pod.ip:
            if pod.name in app.pods:
                app.remove_pod(pod.name)
            return
        draining = pod.annotations.get(DRAINING) == "true"
        current = app.pods.get(pod.name)
        if current is not None and (
            current.url,
            current.ready,
            current.deleting,
            current.draining,
        ) == (pod.url, pod.ready, pod.deleting, draining):
            return
        app.set_pod(PodState(pod.name, pod.url, ready=pod.ready, deleting=pod.deleting))
        app.pods[pod.name].draining = draining  # set_pod keeps an old mark: the annotation rules
        if current is None or current.serving != app.pods[pod.name].serving:
            log.info(
                "pod",
                model=app.name,
                pod=pod.name,
                url=pod.url,
                ready=pod.ready,
                deleting=pod.deleting,
                draining=draining,
            )

    def _drop_pod(self, key: tuple[str, str]) -> None:
        pod = self._pods.pop(key, None)
        if pod is None:
            return
        app = self._app_of(pod)
        if app is not None and pod.name in app.pods:
            app.remove_pod(pod.name)
            log.info("pod gone", model=app.name, pod=pod.name)

    def _pods_changed(self) -> None:
        if self.monitors is not None:
            self.monitors.sync()
        if self.on_pods_changed is not None:
            try:
                self.on_pods_changed()
            except Exception:
                log.exception("pod change hook failed")
