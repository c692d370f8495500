"""The pod runner plays the kubelet for ComfyUI pods in the test world.

KWOK schedules nothing and runs nothing: it only writes pod status. For pods labelled
`app.kubernetes.io/component=comfyui` it makes them Running with a loopback pod IP and leaves them
unready. The pod runner then does what a kubelet would: starts a ComfyUI emulator process listening
on the pod's IP and container port, runs the readiness probe and sets the Ready condition, restarts
the process if it dies, and on deletion calls the preStop hook, stops the process within the grace
period and removes the pod. The proxy and the operator thus exercise their production code paths
(pod watch, pod IPs, real HTTP) against something that answers like ComfyUI.

Model-download Job pods are run for real: their container command runs on the host with its
volumes mapped to host folders (see launch.py and mounts.py), and its exit code and termination
message become the pod's terminated state, which the Job controller then acts on.

With `--comfyui real` (or a pod annotated `testworld.serverless-comfyui.io/comfyui: real`) the
ComfyUI child is the real ComfyUI instead of the emulator (realcomfy.py).

Not emulated: images, exec probes and hooks, resource limits, network isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.testworld.launch import (
    COMPONENTS,
    ComfyUIChoice,
    Launch,
    container_port,
    named_port,
    plan_launch,
)
from serverless_comfyui.testworld.nodes import REAL_NODE_PREFIX
from serverless_comfyui.testworld.processes import die_with_parent

log = logging.getLogger("pod-runner")

EMULATED_SELECTOR = f"app.kubernetes.io/component in ({','.join(COMPONENTS)})"
RESTART_BACKOFF_SECONDS = 1.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_port(port: Any, container: Any) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    return named_port(container, str(port)) or container_port(container)


@dataclass
class RunningPod:
    """One emulated pod: its emulator process and its probe loop."""

    namespace: str
    name: str
    uid: str
    ip: str
    spec: Any
    data_dir: Path
    launch: Launch | None = None
    started_at: str = ""
    process: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ready: bool = False
    restarts: int = 0
    terminating: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def container(self) -> Any:
        return self.spec.containers[0]

    @property
    def port(self) -> int:
        return container_port(self.container)


class PodRunner:
    def __init__(
        self,
        api: client.CoreV1Api,
        state_dir: Path,
        selector: str,
        comfyui: ComfyUIChoice | None = None,
    ) -> None:
        self.api = api
        self.comfyui = comfyui or ComfyUIChoice()
        self.state_dir = state_dir
        self.selector = selector
        self.pods: dict[str, RunningPod] = {}
        self.terminating: set[str] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            await self._watch_forever()
        finally:
            await asyncio.gather(*(self._stop_process(p) for p in self.pods.values()))
            await self.http.close()

    async def _watch_forever(self) -> None:
        while True:
            try:
                listing = await self.api.list_pod_for_all_namespaces(label_selector=self.selector)
                seen = set()
                for pod in listing.items:
                    seen.add(pod.metadata.uid)
                    await self.on_pod(pod)
                for uid in [uid for uid in self.pods if uid not in seen]:
                    await self._forget(uid)
                stream = watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces,
                    label_selector=self.selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=300,
                )
                async for event in stream:
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        await self._forget(pod.metadata.uid)
                    else:
                        await self.on_pod(pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must survive apiserver hiccups and 410 Gone
                log.warning("pod watch interrupted (%s); relisting", exc)
                await asyncio.sleep(0.5)

    async def on_pod(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if not pod.spec.node_name or pod.spec.node_name.startswith(REAL_NODE_PREFIX):
            return  # unscheduled, or on a real node (realnode.py), whose kubelet runs it
        running = self.pods.get(uid)
        if pod.metadata.deletion_timestamp is not None:
            if uid not in self.terminating:
                self.terminating.add(uid)
                task = asyncio.create_task(self._terminate(pod, running))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
            return
        if running is None and pod.status.phase == "Running" and pod.status.pod_ip:
            running = RunningPod(
                namespace=pod.metadata.namespace,
                name=pod.metadata.name,
                uid=uid,
                ip=pod.status.pod_ip,
                spec=pod.spec,
                data_dir=self.state_dir / pod.metadata.namespace / pod.metadata.name,
            )
            self.pods[uid] = running
            try:
                running.launch = await plan_launch(
                    self.api, pod, running.ip, running.data_dir, self.comfyui
                )
            except Exception as exc:  # a missing Secret or ConfigMap: the kubelet would wait
                log.warning("cannot start %s yet: %s", running.key, exc)
                self.pods.pop(uid)
                return
            try:
                await self._start_process(running)
            except OSError as exc:  # e.g. the command does not exist: the container fails
                log.warning("cannot start %s: %s", running.key, exc)
                if running.launch.run_to_completion:
                    await self._set_terminated(running, 127)
                else:
                    self.pods.pop(uid)
                return
            running.tasks.append(asyncio.create_task(self._supervise(running)))
            if not running.launch.run_to_completion:
                running.tasks.append(asyncio.create_task(self._probe_loop(running)))

    # -- the container ----------------------------------------------------------------------

    async def _start_process(self, pod: RunningPod) -> None:
        assert pod.launch is not None
        pod.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **pod.launch.env}
        args = pod.launch.args
        pod.started_at = _now()
        log_file = (pod.data_dir / "container.log").open("ab")
        pod.process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=env,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        log.info("started %s for %s on %s (pid %d)", args[2], pod.key, pod.ip, pod.process.pid)

    async def _supervise(self, pod: RunningPod) -> None:
        """Restart the emulator when it dies, as restartPolicy Always would."""
        while not pod.terminating:
            assert pod.process is not None
            code = await pod.process.wait()
            if pod.terminating:
                return
            assert pod.launch is not None
            if pod.launch.run_to_completion:
                await self._set_terminated(pod, code)
                return
            pod.restarts += 1
            log.warning("emulator for %s exited with %d; restart %d", pod.key, code, pod.restarts)
            await self._set_ready(pod, False, reason="ContainerExited")
            await asyncio.sleep(RESTART_BACKOFF_SECONDS)
            if not pod.terminating:
                await self._start_process(pod)

    async def _stop_process(self, pod: RunningPod, grace: float = 5.0) -> None:
        for task in pod.tasks:
            task.cancel()
        proc = pod.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0.1))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _set_terminated(self, pod: RunningPod, code: int) -> None:
        """A run-to-completion container exited: report it as the kubelet would."""
        assert pod.launch is not None
        message = ""
        if pod.launch.termination_log is not None and pod.launch.termination_log.exists():
            message = pod.launch.termination_log.read_text(errors="replace")[:4096]
        now = _now()
        body = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": now,
                    },
                ],
                "containerStatuses": [
                    {
                        "name": pod.container.name,
                        "image": pod.container.image,
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "message": message,
                                "startedAt": pod.started_at,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
            }
        }
        try:
            await self.api.patch_namespaced_pod_status(pod.name, pod.namespace, body)
            log.info("%s terminated with exit code %d", pod.key, code)
        except ApiException as exc:
            log.warning("could not report %s terminated: %s", pod.key, exc.reason)

    # -- probes ----------------------------------------------------------------------------

    async def _probe_once(self, pod: RunningPod, probe: Any) -> bool:
        assert self.http is not None
        if pod.process is None or pod.process.returncode is not None:
            return False
        if probe is not None and probe.http_get is not None:
            port = resolve_port(probe.http_get.port, pod.container)
            url = f"http://{pod.ip}:{port}{probe.http_get.path or '/'}"
            timeout = aiohttp.ClientTimeout(total=float(probe.timeout_seconds or 1))
            try:
                async with self.http.get(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            except (aiohttp.ClientError, TimeoutError):
                return False
        # No HTTP probe: ready once the container accepts connections.
        port = pod.port
        if probe is not None and probe.tcp_socket is not None:
            port = resolve_port(probe.tcp_socket.port, pod.container)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(pod.ip, port), 1)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _probe_loop(self, pod: RunningPod) -> None:
        probe = pod.container.readiness_probe
        period = float(probe.period_seconds or 10) if probe else 0.2
        failure_threshold = int(probe.failure_threshold or 3) if probe else 1
        success_threshold = int(probe.success_threshold or 1) if probe else 1
        if probe and probe.initial_delay_seconds:
            await asyncio.sleep(float(probe.initial_delay_seconds))
        successes = failures = 0
        while not pod.terminating:
            if await self._probe_once(pod, probe):
                successes, failures = successes + 1, 0
                if not pod.ready and successes >= success_threshold:
                    await self._set_ready(pod, True)
            else:
                successes, failures = 0, failures + 1
                if pod.ready and failures >= failure_threshold:
                    await self._set_ready(pod, False, reason="ReadinessProbeFailed")
            await asyncio.sleep(period)

    async def _set_ready(self, pod: RunningPod, ready: bool, reason: str = "") -> None:
        if pod.ready == ready and reason != "ContainerExited":
            return
        pod.ready = ready
        status = "True" if ready else "False"
        now = _now()
        conditions = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]
        for kind in ("Ready", "ContainersReady"):
            condition = {"type": kind, "status": status, "lastTransitionTime": now}
            if reason:
                condition["reason"] = reason
            conditions.append(condition)
        container = pod.container
        state = {"running": {"startedAt": now}}
        body = {
            "status": {
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": ready,
                        "started": True,
                        "restartCount": pod.restarts,
                        "state": state,
                    }
                ],
            }
        }
        try:
            await self.api.patch_namespaced_pod_status(pod.name, pod.namespace, body)
            log.info("%s Ready=%s %s", pod.key, status, reason)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not set Ready=%s on %s: %s", status, pod.key, exc.reason)

    # -- deletion ----------------------------------------------------------------------------

    async def _terminate(self, pod_obj: Any, pod: RunningPod | None) -> None:
        """Graceful deletion: preStop hook, SIGTERM, wait out the grace period, remove."""
        name, namespace = pod_obj.metadata.name, pod_obj.metadata.namespace
        grace = float(pod_obj.metadata.deletion_grace_period_seconds or 0)
        deadline = asyncio.get_running_loop().time() + grace
        if pod is not None:
            pod.terminating = True
            hook = pod.container.lifecycle.pre_stop if pod.container.lifecycle else None
            if hook is not None and hook.http_get is not None and self.http is not None:
                url = f"http://{pod.ip}:{resolve_port(hook.http_get.port, pod.container)}"
                url += hook.http_get.path or "/"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=grace)):
                        pass
            remaining = deadline - asyncio.get_running_loop().time()
            await self._stop_process(pod, grace=remaining)
        try:
            await self.api.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod_obj.metadata.uid),
                ),
            )
            log.info("removed %s/%s", namespace, name)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("could not remove %s/%s: %s", namespace, name, exc.reason)

    async def _forget(self, uid: str) -> None:
        self.terminating.discard(uid)
        pod = self.pods.pop(uid, None)
        if pod is not None:
            pod.terminating = True
            await self._stop_process(pod, grace=1.0)


async def _main(args: argparse.Namespace) -> None:
    await config.load_kube_config(config_file=args.kubeconfig)
    async with client.ApiClient() as api_client:
        choice = ComfyUIChoice(args.comfyui, Path(args.comfyui_home) if args.comfyui_home else None)
        runner = PodRunner(
            client.CoreV1Api(api_client), Path(args.state_dir), args.selector, choice
        )
        task = asyncio.create_task(runner.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--selector", default=EMULATED_SELECTOR)
    parser.add_argument(
        "--comfyui", choices=("emulator", "real"), default="emulator",
        help="what ComfyUI pods run unless their annotation says otherwise",
    )  # fmt: skip
    parser.add_argument("--comfyui-home", help="the real ComfyUI (`make comfyui-env`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
