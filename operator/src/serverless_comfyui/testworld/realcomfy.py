"""The real ComfyUI in the test world: a host process from `.tools/comfyui` (`make comfyui-env`:
ComfyUI's source and a virtualenv with the ComfyUI image's locked environment), started where
the emulator would be, for a whole world or for chosen pods.

A pod runs the real ComfyUI when its annotation `testworld.serverless-comfyui.io/comfyui` is
`real` (FluxWorkflow `spec.podAnnotations` sets it), or when the world's default is `real` and
the annotation does not say `emulator`. It listens on the pod's IP with its folders on the pod's
mounts, as in the image: `models` through an extra-model-paths file made from the image's own,
`input` and `output` on their mounts, everything else under the pod's scratch folder. It runs on
CPU: the image entrypoint adds `--cpu` where there is no NVIDIA device.
"""

from __future__ import annotations

import os
from pathlib import Path

from serverless_comfyui.entrypoint.settings import COMFYUI_HOME

COMFYUI_ANNOTATION = "testworld.serverless-comfyui.io/comfyui"
KINDS = ("emulator", "real")
# The image's model-folder layout (images/comfyui/extra_model_paths.yaml), base path replaced.
IMAGE_MODEL_PATHS = Path(__file__).resolve().parents[4] / "images/comfyui/extra_model_paths.yaml"


class MissingComfyUIError(RuntimeError):
    pass


def find_comfyui_home() -> Path:
    """`.tools/comfyui` of this checkout (or SERVERLESS_COMFYUI_COMFYUI_HOME)."""
    env = os.environ.get("SERVERLESS_COMFYUI_COMFYUI_HOME")
    here = Path.cwd().resolve()
    candidates = [Path(env)] if env else [p / ".tools" / "comfyui" for p in (here, *here.parents)]
    for candidate in candidates:
        if (candidate / "ComfyUI" / "main.py").is_file() and (candidate / "venv").is_dir():
            return candidate
    raise MissingComfyUIError(
        "the real ComfyUI is not built: run `make comfyui-env` (or set "
        "SERVERLESS_COMFYUI_COMFYUI_HOME to a folder holding ComfyUI/ and venv/)"
    )


def comfyui_kind(annotations: dict[str, str] | None, default: str) -> str:
    kind = (annotations or {}).get(COMFYUI_ANNOTATION, default)
    if kind not in KINDS:
        raise ValueError(f"{COMFYUI_ANNOTATION}: {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def _model_paths_file(models: Path, data_dir: Path) -> Path:
    text = IMAGE_MODEL_PATHS.read_text().replace(f"{COMFYUI_HOME}/models", str(models))
    path = data_dir / "extra_model_paths.yaml"
    path.write_text(text)
    return path


def real_comfyui_args(
    home: Path, ip: str, port: int, data_dir: Path, mounts: dict[str, Path]
) -> list[str]:
    """ComfyUI 0.8.0's command line for a pod (its flags: comfy/cli_args.py)."""
    (data_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)  # ComfyUI needs one
    args = [
        str(home / "venv" / "bin" / "python"),
        str(home / "ComfyUI" / "main.py"),
        f"--listen={ip}",
        f"--port={port}",
        f"--base-directory={data_dir}",
        f"--temp-directory={data_dir}",
        "--disable-auto-launch",
    ]
    for folder in ("input", "output", "user"):
        mount = mounts.get(f"{COMFYUI_HOME}/{folder}")
        if mount is not None:
            args.append(f"--{folder}-directory={mount}")
    models = mounts.get(f"{COMFYUI_HOME}/models")
    if models is not None:
        args.append(f"--extra-model-paths-config={_model_paths_file(models, data_dir)}")
    return args
