"""The results store: conversion with Pillow, safe names, atomic files."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from serverless_comfyui.api.results import ResultStore, convert_image


def png_bytes(mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (8, 6), (10, 20, 30, 128) if mode == "RGBA" else (10, 20, 30)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def test_png_passes_through_and_jpeg_webp_are_converted() -> None:
    data = png_bytes()
    assert convert_image(data, "a_00001_.png", "png", 90) == (data, "a_00001_.png", (8, 6))
    jpeg, name, size = convert_image(data, "a_00001_.png", "jpeg", 80)
    assert name == "a_00001_.jpg" and size == (8, 6)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    webp, name, _ = convert_image(data, "a_00001_.png", "webp", 80)
    assert name == "a_00001_.webp" and Image.open(io.BytesIO(webp)).format == "WEBP"
    # Not an image: kept as it is.
    assert convert_image(b"not an image", "x.mp4", "jpeg", 80) == (b"not an image", "x.mp4", None)


async def test_save_read_and_refuse_unsafe_names(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    saved = await store.save(
        "t-1", "a_00001_.png", png_bytes("RGB"), fmt="jpeg", quality=70, node="9"
    )
    assert saved.filename == "a_00001_.jpg" and saved.content_type == "image/jpeg"
    assert (saved.width, saved.height, saved.node) == (8, 6, "9")
    assert await store.read("t-1", "a_00001_.jpg") is not None
    assert not list((tmp_path / "t-1").glob(".tmp-*"))
    for task_id, name in (("..", "x.png"), ("t-1", "../x.png"), ("t-1", ".hidden"), ("a/b", "x")):
        assert store.path(task_id, name) is None
        assert await store.read(task_id, name) is None
    await store.remove("t-1")
    assert store.task_ids() == []
