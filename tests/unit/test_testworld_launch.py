"""The pod runner's launch plans: container paths map to host folders, the host's own paths
never do."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio import client

from serverless_comfyui.testworld import launch
from serverless_comfyui.testworld.mounts import translate


def downloader_pod() -> client.V1Pod:
    container = client.V1Container(
        name="downloader",
        image="devpod:test",
        command=["python", "-m", "serverless_comfyui.downloader"],
        args=["--dest=/models", "--termination-log=/dev/termination-log", "--tmp=/tmp/x"],
        volume_mounts=[
            client.V1VolumeMount(name="models", mount_path="/models"),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="dl", namespace="ns", labels={"app.kubernetes.io/component": "model-downloader"}
        ),
        spec=client.V1PodSpec(
            containers=[container],
            volumes=[
                client.V1Volume(name="models", empty_dir=client.V1EmptyDirVolumeSource()),
                client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
            ],
        ),
    )


async def test_interpreter_under_a_mount_path_is_not_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CI checkout under /tmp puts the interpreter under the container's /tmp mount.
    monkeypatch.setattr(launch.sys, "executable", "/tmp/ci-clone/.venv/bin/python")
    plan = await launch.plan_launch(None, downloader_pod(), "127.66.0.9", tmp_path)  # type: ignore[arg-type]
    assert plan.args[0] == "/tmp/ci-clone/.venv/bin/python"
    assert plan.args[3] == f"--dest={tmp_path / 'emptydir' / 'models'}"
    assert plan.args[4] == f"--termination-log={tmp_path / 'termination-log'}"
    assert plan.args[5] == f"--tmp={tmp_path / 'emptydir' / 'tmp'}/x"
    assert plan.run_to_completion
    assert plan.env["HTTPS_PROXY"] == "http://127.0.0.1:9"  # nothing leaves the machine


def test_translate_maps_longest_mount_and_leaves_other_paths() -> None:
    mounts = {"/opt/ComfyUI": Path("/h/a"), "/opt/ComfyUI/models": Path("/h/m")}
    assert translate("/opt/ComfyUI/models/vae", mounts) == "/h/m/vae"
    assert translate("--x=/opt/ComfyUI/input", mounts) == "--x=/h/a/input"
    assert translate("/opt/ComfyUIx", mounts) == "/opt/ComfyUIx"
    assert translate("relative/path", mounts) == "relative/path"
