"""What process the pod runner starts in place of a pod's container.

- A ComfyUI pod made by the operator (it has a port named `health`) runs our real image
  entrypoint (`serverless_comfyui.entrypoint`), whose ComfyUI child is the emulator, or the real
  ComfyUI where the world or the pod asks for it (realcomfy.py): readiness, warm-up and drain
  are then the production code.
- Any other ComfyUI pod runs the bare emulator (or ComfyUI) on the pod IP and its first port.
- A model-download pod runs its container command (`python -m serverless_comfyui.downloader`)
  with paths mapped to host folders, to completion; its termination message is read back.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from serverless_comfyui.entrypoint.settings import COMFYUI_HOME  # ComfyUI's folder in the image
from serverless_comfyui.testworld.mounts import resolve_env, resolve_mounts, translate
from serverless_comfyui.testworld.realcomfy import comfyui_kind, real_comfyui_args

COMFYUI_COMPONENT = "comfyui"
DOWNLOADER_COMPONENT = "model-downloader"
COMPONENTS = (COMFYUI_COMPONENT, DOWNLOADER_COMPONENT)
# Pod annotations `emulator.serverless-comfyui.io/<setting>` become EMULATOR_<SETTING> for the
# emulator process, e.g. `emulator.serverless-comfyui.io/step-seconds: "0.5"`.
EMULATOR_ANNOTATION_PREFIX = "emulator.serverless-comfyui.io/"
DEFAULT_PORT = 8188
LOOPBACK_ONLY_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@dataclass
class Launch:
    args: list[str]
    env: dict[str, str]
    run_to_completion: bool = False
    termination_log: Path | None = None
    mounts: dict[str, Path] = field(default_factory=dict)


def emulator_env(annotations: dict[str, str] | None) -> dict[str, str]:
    env = {}
    for key, value in (annotations or {}).items():
        if key.startswith(EMULATOR_ANNOTATION_PREFIX):
            setting = key.removeprefix(EMULATOR_ANNOTATION_PREFIX).replace("-", "_").upper()
            env[f"EMULATOR_{setting}"] = value
    return env


def named_port(container: Any, name: str) -> int | None:
    for port in container.ports or []:
        if port.name == name:
            return int(port.container_port)
    return None


def container_port(container: Any) -> int:
    for port in container.ports or []:
        return int(port.container_port)
    return DEFAULT_PORT


def component(pod: Any) -> str:
    return str((pod.metadata.labels or {}).get("app.kubernetes.io/component", ""))


def _emulator_args(ip: str, port: int, data_dir: Path, models: Path | None) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "serverless_comfyui.emulator",
        f"--host={ip}",
        f"--port={port}",
        f"--data-dir={data_dir}",
    ]
    if models is not None:
        args.append(f"--models-dir={models}")
    return args


def _link_comfyui_folders(data_dir: Path, mounts: dict[str, Path]) -> None:
    """The emulator keeps input/ and output/ under its data dir: point them at the mounts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output"):
        target = mounts.get(f"{COMFYUI_HOME}/{folder}")
        link = data_dir / folder
        if target is not None and not link.exists():
            link.symlink_to(target, target_is_directory=True)


@dataclass(frozen=True)
class ComfyUIChoice:
    """Which ComfyUI the world's pods run unless annotated otherwise, and where the real one is."""

    default: str = "emulator"
    real_home: Path | None = None


def _comfyui_args(
    real_home: Path | None, ip: str, port: int, data_dir: Path, mounts: dict[str, Path]
) -> list[str]:
    """The real ComfyUI's command line where real_home is given, else the emulator's."""
    if real_home is not None:
        return real_comfyui_args(real_home, ip, port, data_dir, mounts)
    _link_comfyui_folders(data_dir, mounts)
    return _emulator_args(ip, port, data_dir, mounts.get(f"{COMFYUI_HOME}/models"))


async def plan_launch(
    api: client.CoreV1Api, pod: Any, ip: str, scratch: Path, comfyui: ComfyUIChoice | None = None
) -> Launch:
    container = pod.spec.containers[0]
    namespace = pod.metadata.namespace
    mounts = await resolve_mounts(api, pod, container, scratch)
    env = await resolve_env(api, namespace, container, mounts)
    env.update(emulator_env(pod.metadata.annotations))
    data_dir = scratch / "comfyui"

    if component(pod) == DOWNLOADER_COMPONENT:
        # The test world may only reach loopback: any other URL (say huggingface.co in a chart's
        # default FluxWorkflow) goes through a proxy on a closed loopback port and fails at once.
        env.update(LOOPBACK_ONLY_ENV)
        log_path = container.termination_message_path or "/dev/termination-log"
        termination_log = scratch / "termination-log"
        mounts[log_path] = termination_log
        command = [*(container.command or []), *(container.args or [])]
        args = [translate(arg, mounts) for arg in command]
        # After translating: the host interpreter's own path may start with a mount path (/tmp).
        if args and args[0] in ("python", "python3"):
            args[0] = sys.executable
        return Launch(args, env, True, termination_log, mounts)

    health = named_port(container, "health")
    http = named_port(container, "http") or container_port(container)
    choice = comfyui or ComfyUIChoice()
    real = comfyui_kind(pod.metadata.annotations, choice.default) == "real"
    if real and choice.real_home is None:
        raise ValueError("this pod asks for the real ComfyUI, which the world was not given")
    child = _comfyui_args(choice.real_home if real else None, ip, http, data_dir, mounts)
    if real:  # nothing the real ComfyUI might fetch leaves the machine
        env.update({**LOOPBACK_ONLY_ENV, "NO_PROXY": "127.0.0.0/8,localhost"})
    if health is None:
        return Launch(child, env, mounts=mounts)
    env.update(
        {
            "COMFYUI_COMMAND": shlex.join(child),
            "COMFYUI_PORT": str(http),
            "COMFYUI_URL": f"http://{ip}:{http}",
            "HEALTH_HOST": ip,
            "HEALTH_PORT": str(health),
        }
    )
    return Launch([sys.executable, "-m", "serverless_comfyui.entrypoint"], env, mounts=mounts)
