"""Pieces of the fake ComfyUI's executor: progress reporting, failures and their reports."""

from __future__ import annotations

from typing import Any

from serverless_comfyui.emulator.graph import is_link
from serverless_comfyui.emulator.hub import SocketHub
from serverless_comfyui.emulator.validation_support import full_type_name

SOURCE = "/tmp/comfy/src"  # where the recorded ComfyUI lived; fake tracebacks point there
_CALL = "await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)"  # noqa: E501
_MAP = "await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)"  # noqa: E501
EXECUTE_FRAMES = [
    f'  File "{SOURCE}/execution.py", line 518, in execute\n'
    f"    output_data, output_ui, has_subgraph, has_pending_tasks = {_CALL}\n",
    f'  File "{SOURCE}/execution.py", line 329, in get_output_data\n    return_values = {_MAP}\n',
    f'  File "{SOURCE}/execution.py", line 303, in _async_map_node_over_list\n'
    "    await process_inputs(input_dict, i)\n",
    f'  File "{SOURCE}/execution.py", line 291, in process_inputs\n    result = f(**inputs)\n'
    "             ^^^^^^^^^^^\n",
]
_LOAD_TORCH_FILE = [
    f'  File "{SOURCE}/comfy/utils.py", line 80, in load_torch_file\n    raise e\n',
    f'  File "{SOURCE}/comfy/utils.py", line 64, in load_torch_file\n'
    '    with safetensors.safe_open(ckpt, framework="pt", device=device.type) as f:\n',
]
# Loader class -> (nodes.py line, function, statement) that reads the model file.
_LOADER_FRAMES = {
    "VAELoader": (800, "load_vae", "sd = comfy.utils.load_torch_file(vae_path)"),
    "UNETLoader": (
        958,
        "load_unet",
        "model = comfy.sd.load_diffusion_model(unet_path, model_options=model_options)",
    ),
    "DualCLIPLoader": (
        1020,
        "load_clip",
        "clip = comfy.sd.load_clip(ckpt_paths=[clip_path1, "
        "clip_path2], embedding_directory=folder_paths.get_folder_paths("
        '"embeddings"), clip_type=clip_type, model_options=model_options)',
    ),
    "LoraLoaderModelOnly": (
        711,
        "load_lora",
        "lora = comfy.utils.load_torch_file(lora_path, safe_load=True)",
    ),
    "CheckpointLoaderSimple": (
        590,
        "load_checkpoint",
        "out = comfy.sd.load_checkpoint_guess_"
        "config(ckpt_path, output_vae=True, output_clip=True, "
        'embedding_directory=folder_paths.get_folder_paths("embeddings"))',
    ),
}


class InterruptProcessing(Exception):
    """`comfy.model_management.InterruptProcessingException`."""


class NodeFailure(Exception):
    """A node raised: what ComfyUI reports in `execution_error`."""

    def __init__(
        self,
        exception_type: str,
        message: str,
        traceback: list[str],
        current_inputs: dict[str, Any],
    ) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.traceback = traceback
        self.current_inputs = current_inputs

    @classmethod
    def from_exception(cls, ex: Exception, current_inputs: dict[str, Any]) -> NodeFailure:
        kind = getattr(ex, "comfy_exception_type", None) or full_type_name(type(ex))
        return cls(kind, f"{ex}\n", list(EXECUTE_FRAMES), current_inputs)


def injected_failure(class_type: str, current_inputs: dict[str, Any]) -> NodeFailure:
    """The `fail_next_prompts` fault: a corrupt model file, as in ws_execution_error.json."""
    if class_type in _LOADER_FRAMES:
        line, function, statement = _LOADER_FRAMES[class_type]
        frame = f'  File "{SOURCE}/nodes.py", line {line}, in {function}\n    {statement}\n'
        return NodeFailure(
            "safetensors._safetensors_rust.SafetensorError",
            "Error while deserializing header: header too large\n",
            [*EXECUTE_FRAMES, frame, *_LOAD_TORCH_FILE],
            current_inputs,
        )
    return NodeFailure(
        "RuntimeError",
        "Emulated node failure (fail_next_prompts)\n",
        list(EXECUTE_FRAMES),
        current_inputs,
    )


def format_value(value: Any) -> Any:
    """`execution.format_value`."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


def reachable(prompt: dict[str, Any], outputs: list[str]) -> set[str]:
    """Nodes the output nodes depend on (themselves included)."""
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        stack += [v[0] for v in prompt[node_id]["inputs"].values() if is_link(v)]
    return seen


class Progress:
    """`comfy_execution.progress` with its WebUI handler: `progress_state` to every socket."""

    def __init__(self, hub: SocketHub, prompt_id: str) -> None:
        self.hub = hub
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}

    def _send(self) -> None:
        active = {
            node_id: {
                "value": state["value"],
                "max": state["max"],
                "state": state["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in self.nodes.items()
            if state["state"] != "pending"
        }
        self.hub.send_sync("progress_state", {"prompt_id": self.prompt_id, "nodes": active})

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {"state": "running", "value": 0.0, "max": 1.0}
        self._send()

    def update(self, node_id: str, value: float, max_value: float) -> None:
        self.nodes[node_id] = {"state": "running", "value": value, "max": max_value}
        self._send()

    def finish(self, node_id: str) -> None:
        entry = self.nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send()
