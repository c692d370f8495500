"""Node schema of the fake ComfyUI: the recorded ComfyUI 0.8.0 `/object_info`, live-filled.

The recording was made without model weights, so its model-file combos are placeholders. The
emulator fills them with the model files it pretends to have (settings lists, or a scan of a
ComfyUI-style models directory), and `LoadImage.image` with the files in its input directory,
exactly where ComfyUI would put them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from serverless_comfyui.emulator.settings import EmulatorSettings

# ComfyUI folder name -> directory names under models/ (first is the modern name).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "loras": ("loras",),
    "checkpoints": ("checkpoints",),
}
# (class, input) -> ComfyUI folder whose files the combo lists.
MODEL_INPUTS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
}
# folder_paths.supported_pt_extensions
MODEL_EXTENSIONS = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
)
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".apng"}
)


def load_recorded_object_info() -> dict[str, Any]:
    """The object_info recorded from a real ComfyUI 0.8.0, packaged with the emulator."""
    text = resources.files("serverless_comfyui.emulator").joinpath("data/object_info.json")
    data: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return data


def _scan(directory: Path) -> list[str]:
    found: list[str] = []
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for name in files:
            if os.path.splitext(name)[1].lower() in MODEL_EXTENSIONS:
                rel = os.path.relpath(os.path.join(root, name), directory)
                found.append(rel.replace(os.sep, "/"))
    return found


class ModelCatalog:
    """The model files the fake ComfyUI pretends to have, per ComfyUI folder name."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.models_dir = settings.models_dir
        self.configured: dict[str, list[str]] = {
            "diffusion_models": list(settings.diffusion_models),
            "text_encoders": list(settings.text_encoders),
            "vae": list(settings.vae),
            "loras": list(settings.loras),
            "checkpoints": list(settings.checkpoints),
        }

    def files(self, folder: str) -> list[str]:
        if self.models_dir is None:
            return sorted(set(self.configured.get(folder, [])))
        names: set[str] = set()
        for sub in MODEL_FOLDERS.get(folder, (folder,)):
            directory = self.models_dir / sub
            if directory.is_dir():
                names.update(_scan(directory))
        return sorted(names)

    def all(self) -> dict[str, list[str]]:
        return {folder: self.files(folder) for folder in MODEL_FOLDERS}


def list_input_images(input_dir: str) -> list[str]:
    """`LoadImage`'s list: image files directly in the input directory, sorted."""
    try:
        names = os.listdir(input_dir)
    except FileNotFoundError:
        return []
    return sorted(
        n
        for n in names
        if os.path.isfile(os.path.join(input_dir, n))
        and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
    )


class NodeSchema:
    """Node classes of the fake ComfyUI, as `/object_info` describes them."""

    def __init__(
        self,
        recorded: dict[str, Any],
        catalog: ModelCatalog,
        input_images: Callable[[], list[str]],
    ) -> None:
        self._recorded = recorded
        self.catalog = catalog
        self._input_images = input_images

    def has_class(self, class_type: Any) -> bool:
        return class_type in self._recorded

    def class_names(self) -> list[str]:
        return list(self._recorded)

    def static(self, class_type: str) -> dict[str, Any]:
        """The recorded entry, without live lists (cheap; for outputs and flags)."""
        info: dict[str, Any] = self._recorded[class_type]
        return info

    def is_output(self, class_type: str) -> bool:
        return self.static(class_type).get("output_node") is True

    def return_types(self, class_type: str) -> tuple[Any, ...]:
        return tuple(self.static(class_type).get("output", []))

    def info(self, class_type: str) -> dict[str, Any]:
        """The `/object_info/{class}` entry with live model and input-file lists."""
        info: dict[str, Any] = copy.deepcopy(self._recorded[class_type])
        inputs = info.get("input", {})
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                options = self._live_options(class_type, name)
                if options is not None and spec and isinstance(spec[0], list):
                    spec[0] = options
        return info

    def input_types(self, class_type: str) -> dict[str, Any]:
        inputs: dict[str, Any] = self.info(class_type).get("input", {})
        return inputs

    def object_info(self) -> dict[str, Any]:
        return {name: self.info(name) for name in self._recorded}

    def _live_options(self, class_type: str, input_name: str) -> list[str] | None:
        folder = MODEL_INPUTS.get((class_type, input_name))
        if folder is not None:
            files = self.catalog.files(folder)
            if class_type == "VAELoader":
                files = [*files, "pixel_space"]
            return files
        if (class_type, input_name) == ("LoadImage", "image"):
            return self._input_images()
        return None


def get_input_info(
    class_inputs: dict[str, Any], input_name: str
) -> tuple[Any, str | None, dict[str, Any]]:
    """ComfyUI's `get_input_info`: (input type, category, extra info)."""
    for category in ("required", "optional", "hidden"):
        section = class_inputs.get(category) or {}
        if input_name in section:
            spec = section[input_name]
            if isinstance(spec, str):  # hidden inputs are bare strings in object_info
                return spec, category, {}
            extra = spec[1] if len(spec) > 1 else {}
            return spec[0], category, extra
    return None, None, {}
