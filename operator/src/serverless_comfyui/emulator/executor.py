"""Prompt execution of the fake ComfyUI, after `execution.PromptExecutor` and `main.prompt_worker`.

Emits the WebSocket messages of ComfyUI 0.8.0 in its order (see the recordings in
tests/fixtures/comfyui-0.8.0): execution_start, execution_cached, then per node progress_state /
executing / [progress per sampler step] / executed / progress_state, and execution_success,
execution_error or execution_interrupted. Time passes as `steps x step_seconds` plus a one-time
`model_load_seconds` when a prompt needs model files that are not "in VRAM".
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from serverless_comfyui.emulator.executor_support import (
    InterruptProcessing,
    NodeFailure,
    Progress,
    format_value,
    injected_failure,
    reachable,
)
from serverless_comfyui.emulator.files import file_hash
from serverless_comfyui.emulator.graph import ExecutionList, is_link, node_signatures
from serverless_comfyui.emulator.nodes import (
    LOADERS,
    SAMPLERS,
    NodeRunner,
    model_files,
    sampler_steps,
)
from serverless_comfyui.emulator.state import EmulatorState

log = structlog.get_logger("comfyui-emulator")


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass
class Run:
    """One prompt being executed."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    client_id: str | None
    progress: Progress
    sigs: dict[str, str] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    ui_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    fail_pending: bool = False
    loaders_pending: set[str] = field(default_factory=set)
    model_files: set[str] = field(default_factory=set)
    load_pending: bool = False
    default_step_pending: bool = False


class Executor:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.cache: dict[str, CacheEntry] = {}
        self.runner = NodeRunner(state.dirs, state.settings.max_image_side)

    def reset(self) -> None:
        """`/free` with free_memory: drop every cached node output."""
        self.cache = {}

    def _is_changed(self, node_id: str, node: dict[str, Any]) -> Any:
        if node.get("class_type") != "LoadImage":
            return False
        path = self.state.dirs.annotated_path(str(node.get("inputs", {}).get("image")))
        if not os.path.isfile(path) or not self.state.dirs.inside(path):
            return f"nan-{uuid.uuid4()}"  # ComfyUI's NaN: never equal, never cached
        return file_hash(path)

    def _add_message(self, run: Run, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self.state.hub.send_sync(event, data, run.client_id)

    async def execute(
        self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any], outputs: list[str]
    ) -> tuple[bool, list[list[Any]], dict[str, Any]]:
        state, hub = self.state, self.state.hub
        state.interrupt_requested = False
        client_id = extra_data.get("client_id") if "client_id" in extra_data else None
        hub.client_id = client_id
        run = Run(prompt_id, prompt, extra_data, client_id, Progress(hub, prompt_id))
        self._add_message(run, "execution_start", {"prompt_id": prompt_id}, broadcast=False)

        run.sigs = node_signatures(prompt, self._is_changed)
        keep = set(run.sigs.values())
        self.cache = {k: v for k, v in self.cache.items() if k in keep}
        cached = [n for n in prompt if run.sigs[n] in self.cache]
        self._add_message(
            run, "execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False
        )
        execution = ExecutionList(prompt, state.schema, lambda n: run.sigs.get(n) in self.cache)
        for node_id in outputs:
            execution.add_node(node_id)
        self._plan(run, outputs, execution)

        success = True
        while not execution.is_empty():
            node_id = execution.pick()
            try:
                await self._execute_node(run, node_id)
            except InterruptProcessing:
                success = False
                data = self._error_head(run, node_id)
                self._add_message(run, "execution_interrupted", data, broadcast=True)
                break
            except NodeFailure as failure:
                success = False
                data = {
                    **self._error_head(run, node_id),
                    "exception_message": failure.message,
                    "exception_type": failure.exception_type,
                    "traceback": failure.traceback,
                    "current_inputs": failure.current_inputs,
                    "current_outputs": list(prompt),
                }
                self._add_message(run, "execution_error", data, broadcast=False)
                break
            execution.complete(node_id)
        else:
            self._add_message(run, "execution_success", {"prompt_id": prompt_id}, broadcast=False)
        hub.last_node_id = None
        history_result = {
            "outputs": {n: ui["output"] for n, ui in run.ui_outputs.items()},
            "meta": {n: ui["meta"] for n, ui in run.ui_outputs.items()},
        }
        return success, run.messages, history_result

    def _error_head(self, run: Run, node_id: str) -> dict[str, Any]:
        return {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
        }

    def _plan(self, run: Run, outputs: list[str], execution: ExecutionList) -> None:
        state = self.state
        nodes = reachable(run.prompt, outputs)
        classes = {n: run.prompt[n]["class_type"] for n in nodes}
        for node_id, class_type in classes.items():
            run.model_files.update(model_files(class_type, run.prompt[node_id]["inputs"]))
        run.load_pending = bool(run.model_files - state.loaded_models)
        run.default_step_pending = not any(c in SAMPLERS for c in classes.values())
        run.loaders_pending = {n for n in execution.pending if classes.get(n) in LOADERS}
        if state.controls.fail_next_prompts > 0:
            state.controls.fail_next_prompts -= 1
            run.fail_pending = True

    def _resolve(self, run: Run, node_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        inputs: dict[str, Any] = {}
        for name, value in run.prompt[node_id]["inputs"].items():
            if is_link(value):
                upstream = run.values.get(value[0], ())
                inputs[name] = upstream[value[1]] if value[1] < len(upstream) else None
            else:
                inputs[name] = value
        hidden: dict[str, Any] = {}
        class_inputs = self.state.schema.static(run.prompt[node_id]["class_type"])["input"]
        for name, kind in (class_inputs.get("hidden") or {}).items():
            if kind == "PROMPT":
                hidden[name] = run.prompt
            elif kind == "EXTRA_PNGINFO":
                hidden[name] = run.extra_data.get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                hidden[name] = node_id
        return inputs, hidden

    async def _execute_node(self, run: Run, node_id: str) -> None:
        hub = self.state.hub
        class_type = run.prompt[node_id]["class_type"]
        entry = self.cache.get(run.sigs[node_id])
        if entry is not None:
            if entry.ui is not None:
                run.ui_outputs[node_id] = entry.ui
                if run.client_id is not None:
                    data = {"node": node_id, "display_node": node_id, "output": entry.ui["output"]}
                    hub.send_sync("executed", {**data, "prompt_id": run.prompt_id}, run.client_id)
            run.progress.finish(node_id)
            run.values[node_id] = entry.outputs
            return

        run.progress.start(node_id)
        inputs, hidden = self._resolve(run, node_id)
        if run.client_id is not None:
            hub.last_node_id = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id}
            hub.send_sync("executing", data, run.client_id)
        if self.state.interrupt_requested:  # nodes.before_node_execution()
            raise InterruptProcessing
        current_inputs = {k: [format_value(v)] for k, v in {**inputs, **hidden}.items()}
        try:
            await self._work(run, node_id, class_type, inputs, current_inputs)
            result = self.runner.run(
                class_type, inputs, hidden, self.state.schema.return_types(class_type)
            )
        except (InterruptProcessing, NodeFailure):
            raise
        except Exception as ex:
            raise NodeFailure.from_exception(ex, current_inputs) from ex
        ui_entry = None
        if result.ui:
            meta = {"node_id": node_id, "display_node": node_id, "parent_node": None}
            ui_entry = {"meta": {**meta, "real_node_id": node_id}, "output": result.ui}
            run.ui_outputs[node_id] = ui_entry
            if run.client_id is not None:
                data = {"node": node_id, "display_node": node_id, "output": result.ui}
                hub.send_sync("executed", {**data, "prompt_id": run.prompt_id}, run.client_id)
        self.cache[run.sigs[node_id]] = CacheEntry(result.outputs, ui_entry)
        run.values[node_id] = result.outputs
        run.progress.finish(node_id)
        run.executed.append(node_id)
        run.loaders_pending.discard(node_id)

    async def _work(
        self,
        run: Run,
        node_id: str,
        class_type: str,
        inputs: dict[str, Any],
        current_inputs: dict[str, Any],
    ) -> None:
        """Where the time goes, and where injected faults strike."""
        state, controls = self.state, self.state.controls
        if run.fail_pending and (class_type in LOADERS or not run.loaders_pending):
            run.fail_pending = False
            raise injected_failure(class_type, current_inputs)
        if run.load_pending and (class_type in LOADERS or class_type in SAMPLERS):
            run.load_pending = False
            log.info("loading models", files=sorted(run.model_files), node=node_id)
            await asyncio.sleep(controls.model_load_seconds)
            state.loaded_models |= run.model_files
        if class_type in SAMPLERS:
            steps = sampler_steps(run.prompt, node_id)
            for step in range(1, steps + 1):
                await asyncio.sleep(controls.step_seconds)
                if state.interrupt_requested:  # the progress hook checks for interrupts
                    raise InterruptProcessing
                run.progress.update(node_id, step, steps)
                data = {"value": step, "max": steps, "prompt_id": run.prompt_id, "node": node_id}
                state.hub.send_sync("progress", data, run.client_id)
                await self._count_step()
        elif run.default_step_pending and state.schema.is_output(class_type):
            run.default_step_pending = False
            await asyncio.sleep(controls.step_seconds)
            await self._count_step()

    async def _count_step(self) -> None:
        state = self.state
        state.steps_executed += 1
        if state.steps_until_crash is None:
            return
        state.steps_until_crash -= 1
        if state.steps_until_crash <= 0:
            log.error("crash_after_steps reached: exiting abruptly", steps=state.steps_executed)
            await state.hub.drain(0.5)
            os._exit(1)
