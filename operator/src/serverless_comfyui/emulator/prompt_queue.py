"""The prompt queue and history of the fake ComfyUI, after `execution.PromptQueue`.

Pending prompts sit in a heap ordered by `number` (so `front: true`, which makes the number
negative, jumps the queue); `GET /queue` shows the heap as stored, like ComfyUI. Every change
calls `on_update`, which broadcasts the `status` message.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000

# (number, prompt_id, prompt, extra_data, outputs_to_execute), as ComfyUI stores and shows it.
QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str]]


class PromptQueue:
    def __init__(self, on_update: Callable[[], None]) -> None:
        self.on_update = on_update
        self._heap: list[tuple[Any, str, int, QueueItem]] = []
        self._seq = itertools.count()
        self.task_counter = 0
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, Any] = {}
        self._wake = asyncio.Event()

    # -- queue ----------------------------------------------------------------------------

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item[0], item[1], next(self._seq), item))
        self.on_update()
        self._wake.set()

    async def get(self) -> tuple[QueueItem, int] | None:
        """The next prompt, now marked running; None when woken only to handle flags."""
        while True:
            if self._heap:
                item = heapq.heappop(self._heap)[3]
                task_id = self.task_counter
                self.task_counter += 1
                self.running[task_id] = item
                self.on_update()
                return item, task_id
            if self.flags:
                return None
            self._wake.clear()
            await self._wake.wait()

    def task_done(
        self, task_id: int, history_result: dict[str, Any], status: dict[str, Any] | None
    ) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        entry: dict[str, Any] = {"prompt": list(item), "outputs": {}, "status": status}
        entry.update(history_result)
        self.history[item[1]] = entry
        self.on_update()

    def current(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending), pending in heap order as ComfyUI returns it."""
        return list(self.running.values()), [entry[3] for entry in self._heap]

    def tasks_remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def wipe_queue(self) -> None:
        self._heap = []
        self.on_update()

    def delete_queue_item(self, predicate: Callable[[QueueItem], bool]) -> bool:
        for index, entry in enumerate(self._heap):
            if predicate(entry[3]):
                if len(self._heap) == 1:
                    self.wipe_queue()
                else:
                    self._heap.pop(index)
                    heapq.heapify(self._heap)
                self.on_update()
                return True
        return False

    # -- history --------------------------------------------------------------------------

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is not None:
            return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for index, key in enumerate(self.history):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def wipe_history(self) -> None:
        self.history = {}

    def delete_history_item(self, prompt_id: Any) -> None:
        if isinstance(prompt_id, str):
            self.history.pop(prompt_id, None)

    # -- flags (POST /free) ---------------------------------------------------------------

    def set_flag(self, name: str, value: Any) -> None:
        self.flags[name] = value
        self._wake.set()

    def take_flags(self) -> dict[str, Any]:
        flags, self.flags = self.flags, {}
        return flags
