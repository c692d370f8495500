"""`/view` and `/upload/image` of the fake ComfyUI, with ComfyUI 0.8.0's path rules.

`/view` refuses absolute names and `..` (400) and subfolders escaping the base directory (403),
and answers 404 with an empty body for a missing file. `/upload/image` renames duplicates to
`name (1).png` unless the content is identical or `overwrite` is set.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from io import BytesIO
from typing import Any

from aiohttp import web
from PIL import Image

from serverless_comfyui.emulator.files import DataDirs
from serverless_comfyui.emulator.keys import state_of

routes = web.RouteTableDef()
_DOWNLOAD_ONLY = {
    "text/html",
    "text/html-sandboxed",
    "application/xhtml+xml",
    "text/javascript",
    "text/css",
}


def _image_response(img: Image.Image, fmt: str, filename: str, quality: int = 90) -> web.Response:
    buffer = BytesIO()
    img.save(buffer, format=fmt, quality=quality)
    return web.Response(
        body=buffer.getvalue(),
        content_type=f"image/{fmt.lower()}",
        headers={"Content-Disposition": f'filename="{filename}"'},
    )


def _view_file(file: str, filename: str, query: Any) -> web.StreamResponse:
    channel = query.get("channel", "rgba")
    if "preview" in query:
        info = query["preview"].split(";")
        fmt = (
            info[0]
            if info[0] in ("webp", "jpeg") and "a" not in query.get("channel", "")
            else "webp"
        )
        quality = int(info[-1]) if info[-1].isdigit() else 90
        with Image.open(file) as img:
            out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img.copy()
        return _image_response(out, fmt, filename, quality)
    if channel == "rgb":
        with Image.open(file) as img:
            return _image_response(img.convert("RGB"), "PNG", filename)
    if channel == "a":
        with Image.open(file) as img:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
            return _image_response(out, "PNG", filename)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _DOWNLOAD_ONLY:
        content_type = "application/octet-stream"
    headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
    return web.FileResponse(file, headers=headers)


def _view(dirs: DataDirs, query: Any) -> web.StreamResponse:
    if "filename" in query:
        filename, output_dir = dirs.annotated(query["filename"])
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if output_dir is None:
            output_dir = dirs.by_type(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if os.path.isfile(file):
            return _view_file(file, filename, query)
    return web.Response(status=404)


@routes.get("/view")
async def view_image(request: web.Request) -> web.StreamResponse:
    return _view(state_of(request).dirs, request.rel_url.query)


def _upload_dir(dirs: DataDirs, kind: Any) -> tuple[str, str]:
    """`get_dir_by_type`: ComfyUI crashes (500) on an unknown type."""
    kind = kind or "input"
    directory = dirs.by_type(kind) if isinstance(kind, str) else None
    if directory is None:
        raise ValueError(f"unknown upload type: {kind!r}")
    return directory, kind


def _same_content(filepath: str, data: bytes) -> bool:
    with open(filepath, "rb") as handle:
        return hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest()


def _store_upload(dirs: DataDirs, post: Any) -> web.Response:
    """`image_upload` in ComfyUI's server.py."""
    image = post.get("image")
    overwrite = post.get("overwrite")
    upload_dir, upload_type = _upload_dir(dirs, post.get("type"))
    if not isinstance(image, web.FileField):
        if image:  # a plain form field: ComfyUI fails on `image.file`
            raise TypeError("'image' is not a file")
        return web.Response(status=400)
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = str(post.get("subfolder", ""))
    full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_output_folder, filename))
    if os.path.commonpath((upload_dir, filepath)) != upload_dir:
        return web.Response(status=400)
    os.makedirs(full_output_folder, exist_ok=True)
    data = image.file.read()
    stem, ext = os.path.splitext(filename)
    duplicate = False
    if overwrite not in ("true", "1"):
        i = 1
        while os.path.exists(filepath):
            if _same_content(filepath, data):
                duplicate = True
                break
            filename = f"{stem} ({i}){ext}"
            filepath = os.path.join(full_output_folder, filename)
            i += 1
    if not duplicate:
        with open(filepath, "wb") as handle:
            handle.write(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    post = await request.post()
    return _store_upload(state_of(request).dirs, post)
