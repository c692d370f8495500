"""What the fake ComfyUI's nodes do: cheap stand-ins that still produce real images.

Models, CLIP, conditioning and the like are opaque tokens; latents carry a size, batch and a
colour derived from the seed and the prompt text; images are small PIL images (no side larger than
`max_image_side`), so `SaveImage` writes genuine PNGs named exactly like ComfyUI's.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from serverless_comfyui.emulator.files import DataDirs, save_images


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _comfyui_invert(value: int) -> int:
    """ComfyUI's ImageInvert works on float32 in 0..1 and SaveImage truncates to uint8:
    255 * (1 - 200/255) is 54.99999, saved as 54 (PIL's invert gives 55)."""
    inverted = _float32(255.0 * _float32(1.0 - _float32(value / 255.0)))
    return max(0, min(255, int(inverted)))


INVERT_TABLE = [_comfyui_invert(v) for v in range(256)] * 3

LOADERS = frozenset(
    {"UNETLoader", "DualCLIPLoader", "VAELoader", "LoraLoaderModelOnly", "CheckpointLoaderSimple"}
)
SAMPLERS = frozenset({"KSampler", "SamplerCustomAdvanced"})
LOADER_FILE_INPUTS = ("unet_name", "clip_name1", "clip_name2", "vae_name", "lora_name", "ckpt_name")

# How `str()` of the real Python objects behind each ComfyUI type looks (for error reports).
_REPR = {
    "MODEL": "comfy.model_patcher.ModelPatcher",
    "CLIP": "comfy.sd.CLIP",
    "VAE": "comfy.sd.VAE",
    "NOISE": "comfy_extras.nodes_custom_sampler.Noise_RandomNoise",
    "GUIDER": "comfy.samplers.CFGGuider",
    "SAMPLER": "comfy.samplers.KSAMPLER",
}


@dataclass(eq=False)
class Token:
    """An opaque stand-in for a model, CLIP, conditioning, noise... output."""

    kind: str
    seed: str = ""

    def __str__(self) -> str:
        return f"<{_REPR.get(self.kind, 'object')} object at 0x{id(self):012x}>"


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch: int
    seed: str = ""


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


def model_files(class_type: str, inputs: dict[str, Any]) -> list[str]:
    """The model files a loader node reads."""
    if class_type not in LOADERS:
        return []
    return [str(inputs[k]) for k in LOADER_FILE_INPUTS if isinstance(inputs.get(k), str)]


def sampler_steps(prompt: dict[str, Any], node_id: str) -> int:
    """Progress steps of a sampler node: KSampler.steps, or the BasicScheduler feeding `sigmas`."""
    node = prompt[node_id]
    inputs = node.get("inputs", {})
    if node.get("class_type") == "KSampler":
        return max(1, int(inputs.get("steps", 1)))
    sigmas = inputs.get("sigmas")
    if isinstance(sigmas, list) and len(sigmas) == 2 and sigmas[0] in prompt:
        source = prompt[sigmas[0]]
        if source.get("class_type") == "BasicScheduler":
            return max(1, int(source.get("inputs", {}).get("steps", 1)))
    return 1


def _color(*parts: object) -> tuple[int, int, int]:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return digest[0], digest[1], digest[2]


class NodeRunner:
    """Runs one node of the emulated classes on already-resolved inputs."""

    def __init__(self, dirs: DataDirs, max_side: int) -> None:
        self.dirs = dirs
        self.max_side = max_side

    def cap(self, width: int, height: int) -> tuple[int, int]:
        width, height = max(1, int(width)), max(1, int(height))
        longest = max(width, height)
        if longest <= self.max_side:
            return width, height
        scale = self.max_side / longest
        return max(1, round(width * scale)), max(1, round(height * scale))

    def as_images(self, value: Any) -> list[Image.Image]:
        if isinstance(value, list) and all(isinstance(v, Image.Image) for v in value):
            return value
        return [Image.new("RGB", self.cap(64, 64), (128, 128, 128))]

    def run(
        self,
        class_type: str,
        inputs: dict[str, Any],
        hidden: dict[str, Any],
        return_types: tuple[Any, ...],
    ) -> NodeResult:
        handler = getattr(self, f"_node_{class_type}", None)
        if handler is not None:
            result: NodeResult = handler(inputs, hidden)
            return result
        return NodeResult(tuple(Token(str(t)) for t in return_types))

    # -- images ----------------------------------------------------------------------------

    def _node_EmptyImage(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        color = int(inputs["color"])
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
        size = self.cap(inputs["width"], inputs["height"])
        return NodeResult(
            ([Image.new("RGB", size, rgb) for _ in range(int(inputs["batch_size"]))],)
        )

    def _node_LoadImage(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        path = self.dirs.annotated_path(str(inputs["image"]))
        if not self.dirs.inside(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        image = image.resize(self.cap(*image.size))
        return NodeResult(([image], Token("MASK")))

    def _node_ImageInvert(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return NodeResult(
            ([i.convert("RGB").point(INVERT_TABLE) for i in self.as_images(inputs["image"])],)
        )

    def _node_ImageBlur(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        blur = ImageFilter.GaussianBlur(radius=float(inputs["sigma"]))
        return NodeResult(([i.filter(blur) for i in self.as_images(inputs["image"])],))

    def _node_ImageScaleBy(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        scale = float(inputs["scale_by"])
        out = []
        for image in self.as_images(inputs["image"]):
            size = self.cap(round(image.width * scale), round(image.height * scale))
            out.append(image.resize(size))
        return NodeResult((out,))

    def _node_SaveImage(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return self._save(inputs, hidden, str(inputs["filename_prefix"]), "output")

    def _node_PreviewImage(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return self._save(inputs, hidden, "ComfyUI", "temp")

    def _save(
        self, inputs: dict[str, Any], hidden: dict[str, Any], prefix: str, kind: str
    ) -> NodeResult:
        images = self.as_images(inputs["images"])
        results = save_images(
            images, prefix, self.dirs, kind, hidden.get("prompt"), hidden.get("extra_pnginfo")
        )
        return NodeResult((), {"images": results})

    # -- latents and sampling ---------------------------------------------------------------

    def _empty_latent(self, inputs: dict[str, Any]) -> NodeResult:
        latent = Latent(int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"]))
        return NodeResult((latent,))

    def _node_EmptyLatentImage(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return self._empty_latent(inputs)

    def _node_EmptySD3LatentImage(
        self, inputs: dict[str, Any], hidden: dict[str, Any]
    ) -> NodeResult:
        return self._empty_latent(inputs)

    def _node_CLIPTextEncode(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return NodeResult((Token("CONDITIONING", str(inputs.get("text", ""))),))

    def _node_FluxGuidance(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        cond = inputs.get("conditioning")
        seed = f"{getattr(cond, 'seed', '')}/{inputs.get('guidance')}"
        return NodeResult((Token("CONDITIONING", seed),))

    def _node_BasicGuider(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return NodeResult((Token("GUIDER", getattr(inputs.get("conditioning"), "seed", "")),))

    def _node_RandomNoise(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        return NodeResult((Token("NOISE", str(inputs.get("noise_seed", 0))),))

    def _sampled(self, latent: Any, *seed: object) -> Latent:
        if not isinstance(latent, Latent):
            latent = Latent(64, 64, 1)
        return Latent(latent.width, latent.height, latent.batch, ":".join(map(str, seed)))

    def _node_KSampler(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        cond = getattr(inputs.get("positive"), "seed", "")
        return NodeResult((self._sampled(inputs.get("latent_image"), inputs.get("seed"), cond),))

    def _node_SamplerCustomAdvanced(
        self, inputs: dict[str, Any], hidden: dict[str, Any]
    ) -> NodeResult:
        noise = getattr(inputs.get("noise"), "seed", "")
        guider = getattr(inputs.get("guider"), "seed", "")
        latent = self._sampled(inputs.get("latent_image"), noise, guider)
        return NodeResult((latent, latent))

    def _node_VAEDecode(self, inputs: dict[str, Any], hidden: dict[str, Any]) -> NodeResult:
        latent = inputs.get("samples")
        if not isinstance(latent, Latent):
            latent = Latent(64, 64, 1)
        size = self.cap(latent.width, latent.height)
        color = _color(latent.seed) if latent.seed else (0, 0, 0)
        return NodeResult(([Image.new("RGB", size, color) for _ in range(latent.batch)],))
