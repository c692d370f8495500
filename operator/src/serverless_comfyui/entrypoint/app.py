"""The entrypoint proper: supervise ComfyUI, warm it up, answer the kubelet's probes, drain.

starting ──ComfyUI answers /system_stats──▶ warming_up ──warm-up ok──▶ ready
                                               │  ▲
                                    failed ────┘  └── retry with backoff (warmup_failed)
any phase ──GET /drain──▶ draining (readyz 503) ──queue empty or deadline──▶ 200
child exits ──▶ exited: livez 503, the entrypoint exits with the child's code
SIGTERM/SIGINT ──▶ stopping: SIGTERM to the child, SIGKILL after a grace, exit 0
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from enum import StrEnum
from typing import Any

import aiohttp
from aiohttp import web

from serverless_comfyui.entrypoint.child import ChildProcess, exit_code_of
from serverless_comfyui.entrypoint.comfy import ComfyUIClient, ComfyUIError
from serverless_comfyui.entrypoint.logs import get_logger
from serverless_comfyui.entrypoint.settings import EntrypointSettings
from serverless_comfyui.entrypoint.warmup import WarmupError, load_plan, run_warmup


class Phase(StrEnum):
    STARTING = "starting"
    WARMING_UP = "warming_up"
    WARMUP_FAILED = "warmup_failed"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


class Entrypoint:
    def __init__(self, settings: EntrypointSettings) -> None:
        self.settings = settings
        self.log = get_logger()
        self.child = ChildProcess(settings.command())
        self.phase = Phase.STARTING
        self.draining = False
        self.exit_code = 0
        self.warmup_source: str | None = None
        self.warmup_attempts = 0
        self.warmup_error: str | None = None
        self.warmup_seconds: float | None = None
        self.warmup_prompt_id: str | None = None
        self.comfyui_up_after: float | None = None
        self.last_answer: float | None = None
        self.started = time.monotonic()
        self._client: ComfyUIClient | None = None
        self._answered = asyncio.Event()
        self._stop = asyncio.Event()

    # -- state ------------------------------------------------------------------------------

    @property
    def client(self) -> ComfyUIClient:
        assert self._client is not None, "the entrypoint is not running"
        return self._client

    def _answered_within(self, seconds: float) -> bool:
        return self.last_answer is not None and time.monotonic() - self.last_answer <= seconds

    def readiness(self) -> tuple[bool, str]:
        if self.phase is Phase.STOPPING:
            return False, self.phase.value
        if self.phase is Phase.EXITED or (self.child.pid is not None and not self.child.running):
            return False, Phase.EXITED.value
        if self.draining:
            return False, "draining"
        if self.phase is Phase.WARMUP_FAILED:
            return False, f"warmup_failed: {self.warmup_error}"
        if self.phase is not Phase.READY:
            return False, self.phase.value
        if not self._answered_within(self.settings.comfyui_down_after_seconds):
            return False, "comfyui_down"
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        if not self.child.running:
            return False, "comfyui_exited"
        if self.last_answer is not None and not self._answered_within(
            self.settings.liveness_stale_seconds
        ):
            return False, "comfyui_unresponsive"
        return True, "alive"

    def status(self) -> dict[str, Any]:
        ready, reason = self.readiness()
        alive, live_reason = self.liveness()
        return {
            "phase": self.phase.value,
            "ready": ready,
            "reason": reason,
            "alive": alive,
            "liveness": live_reason,
            "draining": self.draining,
            "child_pid": self.child.pid,
            "child_exit_code": self.child.returncode,
            "comfyui_url": self.settings.base_url(),
            "comfyui_up_after_seconds": _round(self.comfyui_up_after),
            "seconds_since_comfyui_answered": _round(
                time.monotonic() - self.last_answer if self.last_answer is not None else None
            ),
            "warmup": {
                "workflow": str(self.settings.warmup_workflow or "") or None,
                "source": self.warmup_source,
                "attempts": self.warmup_attempts,
                "duration_seconds": _round(self.warmup_seconds),
                "prompt_id": self.warmup_prompt_id,
                "last_error": self.warmup_error,
            },
            "uptime_seconds": _round(time.monotonic() - self.started),
        }

    # -- main -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        async with aiohttp.ClientSession() as session:
            self._client = ComfyUIClient(session, self.settings.base_url())
            runner = await self._start_health_server()
            tasks: list[asyncio.Task[None]] = []
            try:
                try:
                    pid = self.child.start()
                except OSError as exc:
                    self.log.error("cannot start comfyui", command=self.child.argv, error=str(exc))
                    self.phase = Phase.EXITED
                    return 127
                self.log.info("comfyui child started", pid=pid, command=self.child.argv)
                if self.settings.runs_on_cpu():
                    self.log.info(
                        "ComfyUI runs on CPU",
                        reason=f"COMFYUI_DEVICE={self.settings.comfyui_device}, "
                        f"NVIDIA devices ({self.settings.nvidia_devices}): "
                        f"{'none' if self.settings.comfyui_device == 'auto' else 'not checked'}",
                    )
                tasks = [
                    asyncio.create_task(self._watch_child()),
                    asyncio.create_task(self._monitor()),
                    asyncio.create_task(self._lifecycle()),
                ]
                await self._stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self.child.running:
                    self.phase = Phase.STOPPING
                    code, killed = await self.child.stop(self.settings.child_stop_timeout_seconds)
                    if killed:
                        self.log.warning(
                            "comfyui killed: it did not stop after SIGTERM",
                            grace_seconds=self.settings.child_stop_timeout_seconds,
                        )
                    else:
                        self.log.info("comfyui stopped", returncode=code)
                await runner.cleanup()
        self.log.info("entrypoint exiting", exit_code=self.exit_code)
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        if self._stop.is_set():
            self.log.warning("second signal: killing comfyui now", signal=signal.Signals(sig).name)
            self.child.send_signal(signal.SIGKILL)
            return
        self.log.info("signal received, stopping comfyui", signal=signal.Signals(sig).name)
        if self.phase is not Phase.EXITED:
            self.phase = Phase.STOPPING
        self.exit_code = 0
        self._stop.set()

    async def _watch_child(self) -> None:
        code = await self.child.wait()
        if self._stop.is_set():
            return
        self.phase = Phase.EXITED
        self.exit_code = exit_code_of(code)
        self.log.error("comfyui exited", returncode=code, exit_code=self.exit_code)
        # Keep answering (livez 503) a moment so the kubelet sees why, then exit.
        await asyncio.sleep(self.settings.exit_linger_seconds)
        self._stop.set()

    async def _monitor(self) -> None:
        """Cached health of ComfyUI: the probes answer from this, never wait on ComfyUI."""
        while True:
            try:
                await self.client.system_stats(limit=5.0)
            except ComfyUIError:
                pass
            else:
                self.last_answer = time.monotonic()
                self._answered.set()
            await asyncio.sleep(1.0 if self._answered.is_set() else 0.2)

    async def _lifecycle(self) -> None:
        timeout = self.settings.startup_timeout_seconds
        try:
            await asyncio.wait_for(self._answered.wait(), timeout)
        except TimeoutError:
            self.log.error(
                "comfyui did not answer /system_stats in time (STARTUP_TIMEOUT_SECONDS)",
                timeout_seconds=timeout,
            )
            self.exit_code = 1
            self._stop.set()
            return
        assert self.child.started_at is not None
        self.comfyui_up_after = time.monotonic() - self.child.started_at
        self.log.info("comfyui up", seconds=round(self.comfyui_up_after, 3))
        await self._warm_up()

    async def _warm_up(self) -> None:
        settings = self.settings
        delay = settings.warmup_retry_seconds
        while not self.draining:
            try:
                plan = load_plan(settings.warmup_workflow)
                self.warmup_source = plan.source
                if plan.graph is None:
                    self.log.info("no warm-up workflow: ready now", reason=plan.source)
                    self.phase = Phase.READY
                    return
                self.phase = Phase.WARMING_UP
                self.warmup_attempts += 1
                self.log.info("warm-up started", source=plan.source, attempt=self.warmup_attempts)
                result = await run_warmup(self.client, plan.graph, settings.warmup_timeout_seconds)
            except WarmupError as exc:
                self.phase = Phase.WARMUP_FAILED
                self.warmup_error = str(exc)
                self.log.warning(
                    "warm-up failed",
                    reason=self.warmup_error,
                    attempt=self.warmup_attempts,
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.warmup_retry_max_seconds)
                continue
            self.warmup_seconds = result.seconds
            self.warmup_prompt_id = result.prompt_id
            self.warmup_error = None
            self.phase = Phase.READY
            self.log.info(
                "warm-up ok: ready",
                seconds=round(result.seconds, 3),
                prompt_id=result.prompt_id,
                attempt=self.warmup_attempts,
            )
            return
        self.log.info("draining: no further warm-up attempts")

    # -- drain ------------------------------------------------------------------------------

    async def drain(self) -> dict[str, Any]:
        """Stop being Ready, then wait until ComfyUI has nothing running and nothing pending (and,
        when that took waiting, DRAIN_OUTPUTS_SECONDS more: the preStop hook's return stops the
        container, and the prompts' clients have yet to fetch their outputs)."""
        settings = self.settings
        self.draining = True
        started = time.monotonic()
        deadline = started + settings.drain_timeout_seconds
        self.log.info("draining", timeout_seconds=settings.drain_timeout_seconds)
        remaining: int | None = None
        waited = False
        while True:
            if not self.child.running or not self._answered.is_set():
                # Nothing can be queued on a ComfyUI that is gone or never came up.
                remaining = 0
            else:
                with contextlib.suppress(ComfyUIError):
                    remaining = await self.client.queue_remaining(
                        limit=max(0.5, min(5.0, deadline - time.monotonic()))
                    )
            seconds = round(time.monotonic() - started, 3)
            if remaining == 0:
                self.log.info("drained", seconds=seconds, waited=waited)
                if waited:  # prompts just finished: their outputs are still to be fetched
                    await asyncio.sleep(
                        max(0.0, min(settings.drain_outputs_seconds, deadline - time.monotonic()))
                    )
                return {"drained": True, "seconds": seconds}
            waited = waited or bool(remaining)
            if time.monotonic() >= deadline:
                self.log.warning(
                    "drain deadline reached with work left (DRAIN_TIMEOUT_SECONDS)",
                    remaining=remaining,
                    seconds=seconds,
                )
                return {"drained": False, "remaining": remaining, "seconds": seconds}
            await asyncio.sleep(
                max(0.0, min(settings.drain_poll_seconds, deadline - time.monotonic()))
            )

    # -- health server ----------------------------------------------------------------------

    async def _start_health_server(self) -> web.AppRunner:
        app = web.Application()
        app[ENTRYPOINT_KEY] = self
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/livez", _livez)
        app.router.add_get("/drain", _drain)
        app.router.add_post("/drain", _drain)
        app.router.add_get("/status", _status)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.health_host, self.settings.health_port)
        await site.start()
        self.log.info(
            "health server listening",
            host=self.settings.health_host,
            port=self.settings.health_port,
        )
        return runner


ENTRYPOINT_KEY = web.AppKey("entrypoint", Entrypoint)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def _readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[ENTRYPOINT_KEY].readiness()
    body = {"ready": ready, "reason": reason}
    return web.json_response(body, status=200 if ready else 503)


async def _livez(request: web.Request) -> web.Response:
    entrypoint = request.app[ENTRYPOINT_KEY]
    alive, reason = entrypoint.liveness()
    body: dict[str, Any] = {"alive": alive, "reason": reason}
    if entrypoint.child.returncode is not None:
        body["returncode"] = entrypoint.child.returncode
    return web.json_response(body, status=200 if alive else 503)


async def _drain(request: web.Request) -> web.Response:
    return web.json_response(await request.app[ENTRYPOINT_KEY].drain())


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENTRYPOINT_KEY].status())
