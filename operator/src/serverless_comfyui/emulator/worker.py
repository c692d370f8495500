"""The fake ComfyUI's prompt worker, after `main.prompt_worker`."""

from __future__ import annotations

import time

import structlog

from serverless_comfyui.emulator.executor import Executor
from serverless_comfyui.emulator.state import EmulatorState

log = structlog.get_logger("comfyui-emulator")


async def prompt_worker(state: EmulatorState, executor: Executor) -> None:
    """`main.prompt_worker`: run queued prompts one at a time, then handle /free flags."""
    while True:
        got = await state.queue.get()
        if got is not None:
            item, task_id = got
            _, prompt_id, prompt, extra_data, outputs = item
            started = time.monotonic()
            try:
                success, messages, result = await executor.execute(
                    prompt, prompt_id, extra_data, outputs
                )
            except Exception:  # a bug in the emulator: never leave the queue stuck
                log.exception("emulator failed to execute prompt", prompt_id=prompt_id)
                success, messages, result = False, [], {"outputs": {}, "meta": {}}
            status = {"status_str": "success" if success else "error", "completed": success}
            state.queue.task_done(task_id, result, {**status, "messages": messages})
            if state.hub.client_id is not None:
                data = {"node": None, "prompt_id": prompt_id}
                state.hub.send_sync("executing", data, state.hub.client_id)
            state.prompts_executed += 1
            elapsed = time.monotonic() - started
            log.info("prompt executed", prompt_id=prompt_id, success=success, seconds=elapsed)
        flags = state.queue.take_flags()
        free_memory = flags.get("free_memory", False)
        if flags.get("unload_models", free_memory):
            state.loaded_models.clear()
        if free_memory:
            executor.reset()
