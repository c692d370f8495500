"""Files of the fake ComfyUI: input/, output/ and temp/ and ComfyUI's rules for naming them.

Mirrors `folder_paths` (annotated names such as `x.png [output]`, `get_save_image_path` with its
per-prefix counter and subfolders) so that clients see the same names as from a real ComfyUI.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


class SaveOutsideOutputError(Exception):
    """ComfyUI raises a bare Exception when a filename_prefix escapes the output folder."""

    comfy_exception_type = "Exception"


@dataclass(frozen=True)
class DataDirs:
    """Absolute input/output/temp directories (ComfyUI compares paths with commonpath)."""

    input: str
    output: str
    temp: str

    @classmethod
    def under(cls, root: Path) -> DataDirs:
        base = os.path.abspath(root)
        dirs = cls(
            input=os.path.join(base, "input"),
            output=os.path.join(base, "output"),
            temp=os.path.join(base, "temp"),
        )
        for path in (dirs.input, dirs.output, dirs.temp):
            os.makedirs(path, exist_ok=True)
        return dirs

    def by_type(self, kind: str | None) -> str | None:
        """`folder_paths.get_directory_by_type`."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind or "")

    def annotated(self, name: str) -> tuple[str, str | None]:
        """`folder_paths.annotated_filepath`: strip a ` [output]`-style suffix."""
        if name.endswith("[output]"):
            return name[:-9], self.output
        if name.endswith("[input]"):
            return name[:-8], self.input
        if name.endswith("[temp]"):
            return name[:-7], self.temp
        return name, None

    def annotated_path(self, name: str) -> str:
        stripped, base = self.annotated(name)
        return os.path.join(base or self.input, stripped)

    def exists_annotated(self, name: str) -> bool:
        return os.path.exists(self.annotated_path(name))

    def inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(
            os.path.commonpath((os.path.realpath(d), real)) == os.path.realpath(d)
            for d in (self.input, self.output, self.temp)
        )


def file_hash(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in (
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(key, value)
    return prefix


def save_image_path(
    filename_prefix: str, output_dir: str, width: int = 0, height: int = 0
) -> tuple[str, str, int, str]:
    """`folder_paths.get_save_image_path`: (folder, filename, next counter, subfolder)."""
    if "%" in filename_prefix:
        filename_prefix = _compute_vars(filename_prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        raise SaveOutsideOutputError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )
    prefix_len = len(os.path.basename(filename_prefix))

    def counter_of(name: str) -> tuple[int, str]:
        prefix = name[: prefix_len + 1]
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    try:
        matches = [
            counter_of(n)
            for n in os.listdir(full_output_folder)
            if os.path.normcase(counter_of(n)[1][:-1]) == os.path.normcase(filename)
            and counter_of(n)[1][-1:] == "_"
        ]
        counter = max(matches)[0] + 1 if matches else 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder


def save_images(
    images: list[Image.Image],
    filename_prefix: str,
    dirs: DataDirs,
    kind: str,
    prompt: dict[str, Any] | None,
    extra_pnginfo: dict[str, Any] | None,
) -> list[dict[str, str]]:
    """`SaveImage.save_images` / `PreviewImage`: write PNGs, return the UI `images` list."""
    if kind == "temp":
        base = dirs.temp
        filename_prefix += "_temp_" + "".join(
            random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5)
        )
        compress_level = 1
    else:
        base = dirs.output
        compress_level = 4
    width, height = images[0].size if images else (0, 0)
    folder, filename, counter, subfolder = save_image_path(filename_prefix, base, width, height)
    results = []
    for batch_number, image in enumerate(images):
        metadata = PngInfo()
        if prompt is not None:
            metadata.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            metadata.add_text(key, json.dumps(value))
        name = filename.replace("%batch_num%", str(batch_number))
        file = f"{name}_{counter:05}_.png"
        image.save(os.path.join(folder, file), pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    return results
