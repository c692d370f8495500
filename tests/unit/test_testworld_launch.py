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


def test_real_comfyui_runs_on_the_pods_folders(tmp_path: Path) -> None:
    """The real ComfyUI's command line: the pod's IP and port, its mounts for input, output and
    user, and the image's model-folder layout rebased onto the models mount."""
    from serverless_comfyui.testworld.realcomfy import real_comfyui_args

    mounts = {f"/opt/ComfyUI/{d}": tmp_path / d for d in ("models", "input", "output", "user")}
    home = tmp_path / "home"
    args = real_comfyui_args(home, "127.66.0.5", 8188, tmp_path / "pod", mounts)
    assert args[:2] == [str(home / "venv/bin/python"), str(home / "ComfyUI/main.py")]
    assert "--listen=127.66.0.5" in args and "--port=8188" in args
    for folder in ("input", "output", "user"):
        assert f"--{folder}-directory={tmp_path / folder}" in args
    (paths,) = [a.split("=", 1)[1] for a in args if a.startswith("--extra-model-paths-config=")]
    text = Path(paths).read_text()
    assert f"base_path: {tmp_path / 'models'}" in text and "/opt/ComfyUI" not in text
    assert (tmp_path / "pod" / "custom_nodes").is_dir()
