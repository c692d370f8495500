"""Finished images, kept after the pod that made them is gone.

Files live at `<results_dir>/<task id>/<filename>` and are served at
`GET /v1/results/<task id>/<filename>`. With several proxy replicas the directory must be
shared (a ReadWriteMany volume mounted into every replica); object storage (S3-compatible) is
future work. A periodic sweep deletes the folders of tasks past their retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

from PIL import Image

from serverless_comfyui.api.models import ImageFormat, ResultFile

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
EXTENSIONS: dict[ImageFormat, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def valid_task_id(task_id: str) -> bool:
    return bool(_TASK_ID.match(task_id))


def valid_filename(name: str) -> bool:
    return bool(_FILENAME.match(name)) and ".." not in name


def content_type_of(filename: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(filename).suffix.lower(), "application/octet-stream")


def convert_image(
    data: bytes, filename: str, fmt: ImageFormat, quality: int
) -> tuple[bytes, str, tuple[int, int] | None]:
    """(bytes, filename, size) in the requested format. PNG is passed through unchanged;
    JPEG and WebP are re-encoded with Pillow (JPEG has no alpha: composited on white)."""
    stem = PurePosixPath(filename).stem
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if fmt == "png" and img.format == "PNG":
                return data, filename, size
            out = io.BytesIO()
            if fmt == "jpeg":
                rgb = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB")
                if rgb.mode == "RGBA":
                    background = Image.new("RGB", rgb.size, (255, 255, 255))
                    background.paste(rgb, mask=rgb.getchannel("A"))
                    rgb = background
                rgb.save(out, format="JPEG", quality=quality, optimize=True)
            elif fmt == "webp":
                img.save(out, format="WEBP", quality=quality)
            else:
                img.save(out, format="PNG")
            return out.getvalue(), stem + EXTENSIONS[fmt], size
    except (OSError, ValueError, Image.DecompressionBombError):
        # Not an image Pillow can read (e.g. a video output): keep it as it is.
        return data, filename, None


class ResultStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folder(self, task_id: str) -> Path:
        if not valid_task_id(task_id):
            raise ValueError(f"invalid task id {task_id!r}")
        return self.root / task_id

    def path(self, task_id: str, filename: str) -> Path | None:
        """The file's path, when both parts are safe names (it may not exist)."""
        if not valid_task_id(task_id) or not valid_filename(filename):
            return None
        return self.root / task_id / filename

    async def save(
        self,
        task_id: str,
        filename: str,
        data: bytes,
        *,
        fmt: ImageFormat = "png",
        quality: int = 90,
        node: str | None = None,
    ) -> ResultFile:
        return await asyncio.to_thread(self._save, task_id, filename, data, fmt, quality, node)

    def _save(
        self,
        task_id: str,
        filename: str,
        data: bytes,
        fmt: ImageFormat,
        quality: int,
        node: str | None,
    ) -> ResultFile:
        body, name, size = convert_image(data, filename, fmt, quality)
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", PurePosixPath(name).name).lstrip(".") or "output"
        folder = self.folder(task_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ResultFile(
            filename=name,
            content_type=content_type_of(name),
            size=len(body),
            node=node,
            width=size[0] if size else None,
            height=size[1] if size else None,
        )

    async def read(self, task_id: str, filename: str) -> bytes | None:
        path = self.path(task_id, filename)
        if path is None:
            return None
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def remove(self, task_id: str) -> None:
        if valid_task_id(task_id):
            await asyncio.to_thread(shutil.rmtree, self.root / task_id, True)

    def task_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def age_seconds(self, task_id: str) -> float:
        try:
            return time.time() - (self.root / task_id).stat().st_mtime
        except OSError:
            return 0.0
