"""Local container images for the test world's real node, without a registry: a static C pause
(the pod sandbox image) and a busybox image with a shell, both FROM scratch, built with podman
from images/pause/ and saved as OCI archives that containerd imports (`import_image`).

podman runs through images/podman.sh, the one place that sets the project's storage and
settings (shared with `make images`). Archives are cached by a hash of their inputs under
~/.cache/serverless-comfyui/testworld-images/."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parents[4] / "images" / "pause"
PODMAN = IMAGES_DIR.parent / "podman.sh"
BUSYBOX = Path("/bin/busybox")
TARGETS = ("pause", "busybox")


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalImage:
    """An image built here: its name (as pods refer to it) and its OCI archive."""

    name: str
    archive: Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "serverless-comfyui"


def _require(command: str, hint: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise ImageBuildError(f"{command} is missing: {hint}")
    return path


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(args)} failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


def inputs_hash() -> str:
    """Hash of everything the images are made from: the build files, busybox and the compiler."""
    digest = hashlib.sha256()
    for path in (IMAGES_DIR / "Dockerfile", IMAGES_DIR / "pause.c", BUSYBOX):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(_run(["gcc", "--version"]).splitlines()[0].encode())
    return digest.hexdigest()[:16]


def podman(*args: str) -> list[str]:
    _require("podman", "run scripts/ensure-container-tools.sh")
    return ["bash", str(PODMAN), *args]


def _build_context(folder: Path) -> None:
    _require("gcc", "apt-get install gcc libc6-dev")
    if not BUSYBOX.exists():
        raise ImageBuildError(f"{BUSYBOX} is missing: run scripts/ensure-busybox.sh")
    shutil.copy(IMAGES_DIR / "Dockerfile", folder / "Dockerfile")
    shutil.copy(BUSYBOX, folder / "busybox")
    _run(
        ["gcc", "-static", "-O2", "-Wall", "-o", str(folder / "pause"), str(IMAGES_DIR / "pause.c")]
    )


def build_local_images() -> dict[str, LocalImage]:
    """The pause and busybox images as OCI archives, built only when their inputs changed."""
    tag = inputs_hash()
    out = cache_root() / "testworld-images"
    out.mkdir(parents=True, exist_ok=True)
    images = {
        target: LocalImage(f"localhost/scui/{target}:{tag}", out / f"{target}-{tag}.oci.tar")
        for target in TARGETS
    }
    if all(image.archive.exists() for image in images.values()):
        return images
    with tempfile.TemporaryDirectory(prefix="scui-images-") as tmp:
        _build_context(Path(tmp))
        for target, image in images.items():
            build = ("build", "--pull=never", "--network=none", f"--target={target}")
            _run(podman(*build, f"--tag={image.name}", tmp))
            partial = image.archive.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            _run(podman("save", "--format=oci-archive", f"--output={partial}", image.name))
            partial.rename(image.archive)
    return images


def import_image(archive: Path, address: Path, name: str | None = None) -> None:
    """Imports an OCI archive into the containerd at address (namespace k8s.io, where the
    kubelet looks); name is the image's reference when the archive carries a bare tag."""
    ctr = _require("ctr", "run scripts/ensure-container-tools.sh")
    args = [ctr, f"--address={address}", "--namespace=k8s.io", "images", "import"]
    if name is not None:
        args.append(f"--index-name={name}")
    _run([*args, str(archive)], timeout=900)
