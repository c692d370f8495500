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
        timeout=300,
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
