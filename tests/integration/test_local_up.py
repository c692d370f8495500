"""`make up` runs the whole product locally; its printed command returns an image after a cold
start; `make down` leaves no process behind. (Run on its own port and pod range, so it works
beside a developer's own `make up`.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from serverless_comfyui.testworld import find_tools_bin
from serverless_comfyui.testworld.processes import free_port

ROOT = Path(__file__).parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def _kubectl(state: Path, *args: str) -> str:
    done = subprocess.run(
        [str(find_tools_bin() / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _fail_next_prompts(state: Path, count: int) -> None:
    """Make the warm pod's emulated ComfyUI fail its next prompts in a node, as a corrupt model
    file makes the real one fail (the emulator's test-only control API, on the pod's IP)."""
    selector = "app.kubernetes.io/component=comfyui"
    ip = _kubectl(
        state, "-n", "serverless-comfyui", "get", "pods", "-l", selector,
        "-o", "jsonpath={.items[0].status.podIP}",
    )  # fmt: skip
    request = urllib.request.Request(
        f"http://{ip}:8188/_emulator/faults",
        data=json.dumps({"fail_next_prompts": count}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


# make up builds a control plane, installs the chart and cold-starts a pod: a minute when the
# machine is quiet, several when it is loaded; the limits only stop a hung run.
@pytest.mark.timeout(1200)
@pytest.mark.cluster
def test_up_generate_down(tmp_path: Path) -> None:
    state = tmp_path / "local"
    port = free_port()
    env = {**os.environ, "SERVERLESS_COMFYUI_TOOLS_BIN": str(find_tools_bin())}
    command = [sys.executable, "-m", "serverless_comfyui.testworld"]
    up = subprocess.run(
        [
            *command,
            "up",
            f"--state-dir={state}",
            f"--proxy-port={port}",
            "--pod-cidr=127.70.0.0/16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"proxy:       http://127.0.0.1:{port}" in up.stdout
        assert "SIMULATED" in up.stdout and "kubeconfig" in up.stdout
        phase = subprocess.run(
            [
                str(find_tools_bin() / "kubectl"),
                f"--kubeconfig={state / 'kubeconfig'}",
                "-n",
                "serverless-comfyui",
                "get",
                "fw/serverless-comfyui",
                "-o",
                "jsonpath={.status.phase}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert phase.stdout == "ScaledToZero", phase.stderr
        out = tmp_path / "out.png"
        generated = subprocess.run(
            ["bash", "scripts/generate.sh", "a lighthouse at dusk", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, "PROXY": f"http://127.0.0.1:{port}"},
            cwd=ROOT,
        )
        assert generated.returncode == 0, generated.stderr
        assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        # The printed one-call alternative: the generation API.
        body = json.dumps({"model": "serverless-comfyui", "prompt": "a lighthouse at dusk"})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/generate",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            result = json.load(response)
        assert result["status"] == "completed", result
        png = base64.b64decode(result["results"][0]["base64"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        _cli_generates_and_reports_failures(tmp_path, state, port, env)
    finally:
        down = subprocess.run(
            [*command, "down", f"--state-dir={state}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )
    assert down.returncode == 0, down.stderr
    assert _processes_mentioning(str(state)) == []


def _cli_generates_and_reports_failures(
    tmp_path: Path, state: Path, port: int, env: dict[str, str]
) -> None:
    """The installed command against `make up`: progress and a PNG; then a prompt that fails
    in ComfyUI ends both it and generate.sh non-zero, at once, with ComfyUI's message."""
    command = Path(sys.executable).with_name("serverless-comfyui")
    url = f"http://127.0.0.1:{port}"
    fox = tmp_path / "fox.png"
    generated = subprocess.run(
        [str(command), "generate", "a red fox", "-o", str(fox), "--url", url],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert "step" in generated.stderr and "running" in generated.stderr, generated.stderr
    assert fox.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    _fail_next_prompts(state, 2)
    # Without the fix generate.sh polled for 10 minutes; 120 s only stops a hung run.
    script = subprocess.run(
        ["bash", "scripts/generate.sh", "a broken fox", str(tmp_path / "no.png")],
        capture_output=True, text=True, timeout=120, env={**env, "PROXY": url}, cwd=ROOT,
    )  # fmt: skip
    assert script.returncode != 0
    assert script.stderr.count("generation failed") == 1, script.stderr
    # "generation failed in <class> (node <id>): <ComfyUI's exception message>"
    (reported,) = [line for line in script.stderr.splitlines() if "generation failed" in line]
    message = reported.split("): ", 1)[1]
    assert message.strip(), reported
    failed = subprocess.run(
        [str(command), "generate", "a broken fox", "-o", str(tmp_path / "no2.png"), "--url", url],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert message in failed.stderr.splitlines()[-1], (message, failed.stderr)
    assert not (tmp_path / "no.png").exists() and not (tmp_path / "no2.png").exists()
