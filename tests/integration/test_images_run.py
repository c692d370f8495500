"""The built container images run (`make images` first): each one under `podman run` with the
project's storage (images/podman.sh). Marked `images`; no control plane needed. Every container
gets a name of ours and is removed afterwards; every podman call has a timeout; waits poll an
endpoint. A missing podman or an image not built from the current sources fails (never skips)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from string import Template

import pytest

from serverless_comfyui.testworld.processes import free_port, wait_until

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
PODMAN = ["bash", str(IMAGES / "podman.sh")]
START_SECONDS = 120.0  # a small image's process answering, on a loaded machine
COMFYUI_READY_SECONDS = 600.0  # ComfyUI boots in 25-110 s on an idle 2-core machine


def versions() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (IMAGES / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper() and not line.startswith("#"):
            values[key] = Template(value).substitute(values)
    return {k: os.environ.get(k, v) for k, v in values.items()}


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def built_image(name: str) -> str:
    """The image's tag, after checking that it is built from the current inputs."""
    if shutil.which("podman") is None:
        pytest.fail(
            "podman is not installed: `make images` installs it (scripts/ensure-container-tools.sh)"
            " and builds the images",
            pytrace=False,
        )
    check = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--check", name],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ENGINE": "podman"},
    )
    if check.returncode != 0:
        pytest.fail(
            f"the {name} image is not built from the current sources: run `make images` first"
            f" (on machines without GitHub set COMFYUI_SOURCE_URL and COMFYUI_SHA256 as .ci/run"
            f" does)\n{check.stderr}",
            pytrace=False,
        )
    return versions()[f"{name.upper()}_IMAGE"]


@contextmanager
def container(
    image: str, *command: str, env: dict[str, str] | None = None, writable: tuple[str, ...] = ()
) -> Iterator[str]:
    """A detached container on the host network (loopback ports only); removed at exit. With
    writable folders, the root filesystem is read-only and only those are writable (tmpfs), as
    in the operator's pods."""
    name = f"scui-test-{uuid.uuid4().hex[:10]}"
    env_args = [f"--env={key}={value}" for key, value in (env or {}).items()]
    root_args = ["--read-only", "--read-only-tmpfs=false"] if writable else []
    root_args += [f"--tmpfs={folder}:rw,mode=1777" for folder in writable]
    started = podman(
        "run", "--detach", "--name", name, "--network", "host", *root_args, *env_args,
        image, *command,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        podman("rm", "--force", "--time", "5", name, timeout=120)


def one_shot(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` without a network, bounded; the container is removed in any case."""
    name = f"scui-test-{uuid.uuid4().hex[:10]}"
    try:
        return podman("run", "--rm", "--name", name, "--network", "none", image, *command)
    finally:
        podman("rm", "--force", "--ignore", "--time", "5", name, timeout=120)


def running(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name)
    return state.stdout.strip() == "true"


def logs(name: str) -> str:
    result = podman("logs", name)
    return result.stdout + result.stderr


def get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of GET url; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
            return response.status, response.headers.get("Content-Type", ""), body
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def wait_for_status(url: str, name: str, timeout: float) -> None:
    """Polls url until it answers 200; fails early, with the logs, if the container ends."""

    def answered() -> bool:
        if not running(name):
            pytest.fail(f"container {name} exited before {url} answered:\n{logs(name)[-4000:]}")
        return get(url, timeout=5)[0] == 200

    try:
        wait_until(answered, timeout=timeout, what=f"{url} to answer 200", interval=1.0)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(name)[-4000:]}", pytrace=False)


def test_controller_image_runs_the_proxy_and_the_operator() -> None:
    image = built_image("controller")
    port = free_port()
    env = {
        "SERVERLESS_COMFYUI_PROXY_STATIC_BACKENDS": '{"x": []}',
        "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
        "SERVERLESS_COMFYUI_PROXY_PORT": str(port),
    }
    with container(image, "python", "-m", "serverless_comfyui.proxy", env=env) as name:
        wait_for_status(f"http://127.0.0.1:{port}/healthz", name, START_SECONDS)

    # The operator's code and kopf import (its default command needs a cluster), as uid 1000.
    smoke = one_shot(
        image,
        "python",
        "-c",
        "import os, kopf; from serverless_comfyui.controller import handlers, __main__;"
        " print(os.getuid(), os.getgid())",
    )
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout.split() == ["1000", "1000"]


def test_devpod_image_has_the_downloader_and_hf() -> None:
    image = built_image("devpod")
    help_text = one_shot(image, "python", "-m", "serverless_comfyui.downloader", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--dest" in help_text.stdout
    cli = one_shot(image, "serverless-comfyui", "--help")
    assert cli.returncode == 0, cli.stderr
    hf = one_shot(image, "hf", "--version")
    assert hf.returncode == 0, hf.stderr
    assert versions()["HUGGINGFACE_HUB_VERSION"] in hf.stdout + hf.stderr


@pytest.mark.timeout(COMFYUI_READY_SECONDS + 300)
def test_comfyui_image_boots_comfyui_behind_the_entrypoint() -> None:
    image = built_image("comfyui")
    comfyui_port, health_port = free_port(), free_port()
    command = (
        "python /opt/ComfyUI/main.py --listen 127.0.0.1 --port ${COMFYUI_PORT}"
        " --disable-auto-launch --extra-model-paths-config"
        " /opt/serverless-comfyui/extra_model_paths.yaml --temp-directory /tmp"
    )
    env = {
        "COMFYUI_PORT": str(comfyui_port),
        "COMFYUI_URL": f"http://127.0.0.1:{comfyui_port}",
        "COMFYUI_COMMAND": command,
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": str(health_port),
        "WARMUP_WORKFLOW": "",  # ready once ComfyUI answers
    }
    # What the operator's pods mount writable (builders.py); everything else is read-only.
    writable = ("/tmp", "/opt/ComfyUI/user", "/opt/ComfyUI/input", "/opt/ComfyUI/output")
    with container(image, env=env, writable=writable) as name:
        wait_for_status(f"http://127.0.0.1:{health_port}/readyz", name, COMFYUI_READY_SECONDS)

        status, _, body = get(f"http://127.0.0.1:{comfyui_port}/system_stats")
        assert status == 200, body
        system = json.loads(body)["system"]
        assert "v" + system["comfyui_version"] == versions()["COMFYUI_VERSION"], system
        assert system["pytorch_version"].split("+")[0] == versions()["TORCH_VERSION"], system

        status, content_type, page = get(f"http://127.0.0.1:{comfyui_port}/")
        assert status == 200 and content_type.startswith("text/html"), (status, content_type)
        assert "<title>ComfyUI</title>" in page, page[:500]  # comfyui-frontend-package's UI

        assert "ComfyUI runs on CPU" in logs(name)
