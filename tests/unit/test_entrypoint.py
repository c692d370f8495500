"""The ComfyUI pod entrypoint, run for real as a subprocess with the ComfyUI emulator as its child:
ready means warm, a failing warm-up keeps the pod unready, a dead ComfyUI ends the container,
and /drain waits for the queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
WARMUP_GRAPH = REPO / "workflows" / "warmup" / "workflow.json"


def image_prompt(color: int = 0) -> dict[str, Any]:
    """A weight-free prompt; a distinct colour per call, so ComfyUI's cache cannot skip it."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "user"},
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pod:
    """One entrypoint process and its emulated ComfyUI."""

    process: asyncio.subprocess.Process
    health: str
    comfy: str
    data_dir: Path
    log_file: Path
    http: aiohttp.ClientSession
    started: float = field(default_factory=time.monotonic)

    def logs(self) -> list[dict[str, Any]]:
        """The entrypoint's JSON log lines (the emulator's own lines are filtered out)."""
        records = []
        for line in self.log_file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def events(self) -> list[str]:
        return [str(r.get("event")) for r in self.logs()]

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.health + path) as response:
            return response.status, await response.json()

    async def ready(self) -> tuple[int, str]:
        status, body = await self.get("/readyz")
        return status, body["reason"]

    async def status(self) -> dict[str, Any]:
        return (await self.get("/status"))[1]  # type: ignore[no-any-return]

    # Limits only stop a broken test: each wait returns as soon as its event happens, and a
    # loaded CI machine can take many seconds to start the entrypoint and its ComfyUI.
    async def wait_for(self, check: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                result = await check()
                if result:
                    return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; logs: {self.log_file.read_text()}")

    async def wait_ready(self, limit: float = 60.0) -> None:
        async def ok() -> bool:
            return (await self.ready())[0] == 200

        await self.wait_for(ok, "readyz 200", limit)

    async def wait_exit(self, limit: float = 60.0) -> int:
        return await asyncio.wait_for(self.process.wait(), limit)

    async def submit(self, graph: dict[str, Any]) -> str:
        async with self.http.post(f"{self.comfy}/prompt", json={"prompt": graph}) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["prompt_id"])

    async def comfy_json(self, path: str) -> Any:
        async with self.http.get(self.comfy + path) as response:
            return await response.json()


@pytest.fixture
async def start_pod(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start the entrypoint: `await start_pod(warmup=..., emulator=[...], env={...})`."""
    pods: list[Pod] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(
        warmup: Path | dict[str, Any] | None = WARMUP_GRAPH,
        emulator: tuple[str, ...] = ("--step-seconds", "0.05"),
        env: dict[str, str] | None = None,
    ) -> Pod:
        index = len(pods)
        comfy_port, health_port = free_port(), free_port()
        data_dir = tmp_path / f"pod{index}"
        data_dir.mkdir()
        command = [sys.executable, "-m", "serverless_comfyui.emulator", "--host", "127.0.0.1"]
        command += ["--port", "${COMFYUI_PORT}", "--data-dir", str(data_dir), *emulator]
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("EMULATOR_", "WARMUP_"))
        }
        environment.update(
            COMFYUI_COMMAND=shlex.join(command),
            COMFYUI_PORT=str(comfy_port),
            HEALTH_HOST="127.0.0.1",
            HEALTH_PORT=str(health_port),
            WARMUP_RETRY_SECONDS="0.2",
            WARMUP_RETRY_MAX_SECONDS="0.5",
            STARTUP_TIMEOUT_SECONDS="20",
            CHILD_STOP_TIMEOUT_SECONDS="5",
        )
        if isinstance(warmup, dict):
            path = tmp_path / f"warmup{index}.json"
            path.write_text(json.dumps(warmup))
            environment["WARMUP_WORKFLOW"] = str(path)
        elif warmup is not None:
            environment["WARMUP_WORKFLOW"] = str(warmup)
        environment.update(env or {})
        log_file = tmp_path / f"pod{index}.log"
        with log_file.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "serverless_comfyui.entrypoint",
                env=environment,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        pod = Pod(
            process=process,
            health=f"http://127.0.0.1:{health_port}",
            comfy=f"http://127.0.0.1:{comfy_port}",
            data_dir=data_dir,
            log_file=log_file,
            http=http,
        )
        pods.append(pod)
        return pod

    try:
        yield start
    finally:
        for pod in pods:
            if pod.process.returncode is None:
                pod.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(pod.process.wait(), 10)
                except TimeoutError:
                    pod.process.kill()
                    await pod.process.wait()
        await http.close()


def emulator_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone.
    with contextlib.suppress(OSError):
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False


async def test_ready_only_after_the_warmup_prompt_finished(
    start_pod: Callable[..., Any],
) -> None:
    # The warm-up graph (EmptyImage -> SaveImage) takes one emulated step of 1 s.
    pod: Pod = await start_pod(emulator=("--step-seconds", "1.0"))
    seen: list[tuple[int, str]] = []

    async def ready() -> bool:
        status, reason = await pod.ready()
        seen.append((status, reason))
        return status == 200

    await pod.wait_for(ready, "readyz 200")
    # No NVIDIA device on this machine: the entrypoint says so and starts ComfyUI with --cpu.
    assert "ComfyUI runs on CPU" in pod.events()
    not_ready = [reason for status, reason in seen if status != 200]
    assert all(status == 503 for status, _ in seen[:-1])
    assert "warming_up" in not_ready

    status = await pod.status()
    prompt_id = status["warmup"]["prompt_id"]
    assert status["phase"] == "ready" and status["warmup"]["attempts"] == 1
    assert status["warmup"]["duration_seconds"] >= 1.0
    # ComfyUI had finished the warm-up prompt when the pod became ready, and its output is under
    # warmup/<prompt_id>, apart from user outputs.
    history = await pod.comfy_json(f"/history/{prompt_id}")
    assert history[prompt_id]["status"]["status_str"] == "success"
    images = history[prompt_id]["outputs"]["2"]["images"]
    assert images[0]["subfolder"] == "warmup"
    assert images[0]["filename"].startswith(prompt_id)
    assert [p.relative_to(pod.data_dir) for p in pod.data_dir.rglob("*.png")] == [
        Path("output") / "warmup" / images[0]["filename"]
    ]
    events = pod.events()
    assert events.index("comfyui up") < events.index("warm-up started")
    assert events.index("warm-up started") < events.index("warm-up ok: ready")
    (ok,) = [r for r in pod.logs() if r.get("event") == "warm-up ok: ready"]
    assert ok["seconds"] >= 1.0 and ok["prompt_id"] == prompt_id

    # SIGTERM: ComfyUI is stopped and the entrypoint exits 0.
    assert (await pod.get("/livez"))[0] == 200
    child = status["child_pid"]
    pod.process.send_signal(signal.SIGTERM)
    assert await pod.wait_exit() == 0
    assert not emulator_pid_alive(child)
    assert "comfyui stopped" in pod.events()


async def test_failing_warmup_keeps_the_pod_unready_and_says_why(
    start_pod: Callable[..., Any],
) -> None:
    broken = {
        "1": {"class_type": "Nope", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    pod: Pod = await start_pod(warmup=broken)
    readiness: list[int] = []

    async def failed_twice() -> Any:
        # Between attempts the pod says warmup_failed; during one, warming_up: wait for the
        # second failure as both endpoints report it, and check it is never ready meanwhile.
        status = await pod.status()
        code, reason = await pod.ready()
        readiness.append(code)
        failed = status["phase"] == "warmup_failed" and reason.startswith("warmup_failed")
        return (status, reason) if failed and status["warmup"]["attempts"] >= 2 else None

    status, reason = await pod.wait_for(failed_twice, "a second failed warm-up")
    assert set(readiness) == {503}
    assert status["phase"] == "warmup_failed" and status["warmup"]["last_error"]
    assert reason.startswith("warmup_failed: Cannot execute because node Nope does not exist")
    # It never gives up (no exit), and ComfyUI itself is alive.
    assert pod.process.returncode is None
    assert (await pod.get("/livez"))[0] == 200
    failures = [r for r in pod.logs() if r.get("event") == "warm-up failed"]
    assert len(failures) >= 2
    assert "node Nope does not exist" in failures[0]["reason"]
    assert failures[0]["retry_in_seconds"] == 0.2 and failures[1]["retry_in_seconds"] == 0.4


async def test_warmup_execution_error_is_retried_until_it_succeeds(
    start_pod: Callable[..., Any],
) -> None:
    # The emulator fails the first prompt while executing (an injected node exception).
    pod: Pod = await start_pod(emulator=("--step-seconds", "0.05", "--fail-next-prompts", "1"))
    await pod.wait_ready()
    (failure,) = [r for r in pod.logs() if r.get("event") == "warm-up failed"]
    assert failure["reason"].startswith("node 1 (EmptyImage): ")
    status = await pod.status()
    assert status["warmup"]["attempts"] == 2
    assert status["warmup"]["last_error"] is None


async def test_library_reference_warms_the_flux_models_with_a_minimal_run(
    start_pod: Callable[..., Any],
) -> None:
    # What the operator mounts today: the FluxWorkflow's spec.workflow reference.
    pod: Pod = await start_pod(
        warmup={"name": "flux_dev_t5fp8"},
        emulator=("--step-seconds", "0.2", "--model-load-seconds", "0.8"),
    )
    await pod.wait_ready()
    status = await pod.status()
    assert status["warmup"]["source"] == "library workflow 'flux_dev_t5fp8'"
    assert status["warmup"]["duration_seconds"] >= 0.8
    state = await pod.comfy_json("/_emulator/state")
    assert "flux1-dev.safetensors" in state["loaded_models"]
    assert state["steps_executed"] == 1  # one sampling step, not the workflow's default 20
    prompt_id = status["warmup"]["prompt_id"]
    history = await pod.comfy_json(f"/history/{prompt_id}")
    graph = history[prompt_id]["prompt"][2]
    assert graph["39"]["inputs"]["filename_prefix"] == f"warmup/{prompt_id}"


async def test_no_warmup_workflow_means_ready_when_comfyui_answers(
    start_pod: Callable[..., Any], tmp_path: Path
) -> None:
    pod: Pod = await start_pod(warmup=tmp_path / "missing.json")
    await pod.wait_ready()
    status = await pod.status()
    assert status["warmup"]["attempts"] == 0
    (record,) = [r for r in pod.logs() if r.get("event") == "no warm-up workflow: ready now"]
    assert "does not exist" in record["reason"]
    assert (await pod.comfy_json("/_emulator/state"))["prompts_executed"] == 0


async def test_comfyui_dying_fails_liveness_and_ends_the_entrypoint(
    start_pod: Callable[..., Any],
) -> None:
    pod: Pod = await start_pod(env={"EXIT_LINGER_SECONDS": "1.5"})
    await pod.wait_ready()
    child = (await pod.status())["child_pid"]
    os.kill(child, signal.SIGKILL)

    async def dead() -> Any:
        code, body = await pod.get("/livez")
        return body if code == 503 else None

    body = await pod.wait_for(dead, "livez 503")
    assert body == {"alive": False, "reason": "comfyui_exited", "returncode": -9}
    assert await pod.ready() == (503, "exited")
    assert await pod.wait_exit() == 128 + signal.SIGKILL
    (record,) = [r for r in pod.logs() if r.get("event") == "comfyui exited"]
    assert record["returncode"] == -9


async def test_an_unanswering_comfyui_is_not_ready_then_not_live(
    start_pod: Callable[..., Any],
) -> None:
    pod: Pod = await start_pod(
        env={"COMFYUI_DOWN_AFTER_SECONDS": "0.5", "LIVENESS_STALE_SECONDS": "1.5"}
    )
    await pod.wait_ready()
    faults = {"http_500_paths": ["/system_stats"]}
    async with pod.http.post(f"{pod.comfy}/_emulator/faults", json=faults) as r:
        assert r.status == 200

    async def down() -> bool:
        return await pod.ready() == (503, "comfyui_down")

    await pod.wait_for(down, "readyz comfyui_down")
    assert (await pod.get("/livez"))[0] == 200  # not yet: liveness is more patient

    async def unresponsive() -> Any:
        code, body = await pod.get("/livez")
        return body if code == 503 else None

    assert (await pod.wait_for(unresponsive, "livez 503"))["reason"] == "comfyui_unresponsive"
    async with pod.http.post(f"{pod.comfy}/_emulator/faults", json={"http_500_paths": []}) as r:
        assert r.status == 200
    await pod.wait_ready()
    assert (await pod.get("/livez"))[0] == 200
    assert pod.process.returncode is None


async def test_comfyui_crash_mid_prompt_exits_with_its_code(
    start_pod: Callable[..., Any],
) -> None:
    # The warm-up is step 1; a user prompt's step makes the emulator exit abruptly (code 1).
    pod: Pod = await start_pod(
        emulator=("--step-seconds", "0.05", "--crash-after-steps", "2"),
        env={"EXIT_LINGER_SECONDS": "0.2"},
    )
    await pod.wait_ready()
    await pod.submit(image_prompt(1))
    assert await pod.wait_exit() == 1


async def test_startup_timeout_exits_1(start_pod: Callable[..., Any]) -> None:
    pod: Pod = await start_pod(
        emulator=("--startup-delay-seconds", "30"), env={"STARTUP_TIMEOUT_SECONDS": "1"}
    )

    async def starting() -> bool:
        return await pod.ready() == (503, "starting")

    await pod.wait_for(starting, "readyz 503 starting")
    assert (await pod.get("/livez"))[0] == 200
    child = (await pod.status())["child_pid"]
    assert await pod.wait_exit() == 1
    assert not emulator_pid_alive(child)
    assert any("STARTUP_TIMEOUT_SECONDS" in event for event in pod.events())


async def test_drain_waits_for_the_queue_to_empty(start_pod: Callable[..., Any]) -> None:
    pod: Pod = await start_pod(env={"DRAIN_OUTPUTS_SECONDS": "3"})
    await pod.wait_ready()
    async with pod.http.post(f"{pod.comfy}/_emulator/faults", json={"step_seconds": 1.0}) as r:
        assert r.status == 200
    prompts = [await pod.submit(image_prompt(color)) for color in range(1, 4)]
    started = time.monotonic()
    drain = asyncio.create_task(pod.get("/drain"))
    await asyncio.sleep(0.15)
    assert await pod.ready() == (503, "draining")  # at once, long before the queue is empty
    assert not drain.done()
    code, body = await drain
    elapsed = time.monotonic() - started
    assert code == 200 and body["drained"] is True
    # Three prompts of 1 s each were queued (the first one had begun), then the outputs window.
    assert elapsed >= 2.0 + 3.0
    assert 2.0 <= body["seconds"] < elapsed
    queue = await pod.comfy_json("/queue")
    assert queue == {"queue_running": [], "queue_pending": []}
    for prompt_id in prompts:
        history = await pod.comfy_json(f"/history/{prompt_id}")
        assert history[prompt_id]["status"]["status_str"] == "success"
    assert await pod.ready() == (503, "draining")
    assert pod.events().count("drained") == 1


async def test_an_idle_drain_returns_at_once(start_pod: Callable[..., Any]) -> None:
    """Nothing ran, so nothing waits for its outputs: no DRAIN_OUTPUTS_SECONDS."""
    pod: Pod = await start_pod(env={"DRAIN_OUTPUTS_SECONDS": "600"})
    await pod.wait_ready()
    code, body = await asyncio.wait_for(pod.get("/drain"), 120)  # not 600: bounded generously
    assert code == 200 and body["drained"] is True


async def test_drain_gives_up_at_its_deadline(start_pod: Callable[..., Any]) -> None:
    pod: Pod = await start_pod(env={"DRAIN_TIMEOUT_SECONDS": "0.8"})
    await pod.wait_ready()
    async with pod.http.post(f"{pod.comfy}/_emulator/faults", json={"step_seconds": 30}) as r:
        assert r.status == 200
    for color in range(1, 3):
        await pod.submit(image_prompt(color))
    # The exec-hook form: `python -m serverless_comfyui.entrypoint drain --url ...`.
    started = time.monotonic()
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serverless_comfyui.entrypoint",
        "drain",
        "--url",
        pod.health,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await cli.communicate()
    elapsed = time.monotonic() - started
    body = json.loads(stdout)
    assert cli.returncode == 2
    assert body["drained"] is False and body["remaining"] == 2
    # Never before its deadline; and long before the 60 s of queued work could end (the bound
    # is loose on purpose: starting the drain command on a loaded machine takes seconds).
    assert 0.8 <= elapsed < 30
    (record,) = [r for r in pod.logs() if "drain deadline reached" in str(r.get("event"))]
    assert record["remaining"] == 2
    assert await pod.ready() == (503, "draining")


def test_drain_cli_without_an_entrypoint_fails_cleanly() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverless_comfyui.entrypoint",
            "drain",
            "--url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["drained"] is False


def test_a_command_that_cannot_start_or_a_bad_setting_exits_at_once(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "WARMUP_"))}
    base.update(HEALTH_HOST="127.0.0.1", HEALTH_PORT=str(free_port()))
    entrypoint = [sys.executable, "-m", "serverless_comfyui.entrypoint"]
    missing = subprocess.run(
        entrypoint,
        env={**base, "COMFYUI_COMMAND": str(tmp_path / "no-such-comfyui") + " --port 1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 127
    assert '"event": "cannot start comfyui"' in missing.stderr
    invalid = subprocess.run(
        entrypoint,
        env={**base, "COMFYUI_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert invalid.returncode == 2
    assert '"event": "invalid configuration"' in invalid.stderr and "comfyui_port" in invalid.stderr
