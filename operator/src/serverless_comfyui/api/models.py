"""What the task store holds: one `Task` document per accepted request.

Times are Unix epoch seconds (floats). The public JSON views (`views.py`) are derived from it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

Phase = Literal[
    "queued",  # in the store's queue, no replica has it yet
    "waiting_for_pod",  # a replica holds it until a pod is ready (cold start) or has room
    "submitting",  # the prompt id is minted and the prompt is being posted to the pod
    "submitted",  # in the pod's ComfyUI queue
    "running",  # ComfyUI is executing it
    "collecting",  # copying the images from the pod into the results store
    "done",
]
Kind = Literal["generate", "comfyui"]
ImageFormat = Literal["png", "jpeg", "webp"]
Delivery = Literal["base64", "url"]
WebhookFormat = Literal["v1", "comfyui-api"]


def now() -> float:
    return time.time()


def new_task_id() -> str:
    return str(uuid.uuid4())


class OutputSpec(BaseModel):
    format: ImageFormat = "png"
    quality: int = Field(90, ge=1, le=100)
    delivery: Delivery = "url"


class WebhookDelivery(BaseModel):
    attempt: int
    at: float
    status: int | None = None
    """HTTP status of the receiver's answer (None: no answer)."""
    error: str | None = None
    duration_ms: int = 0


class WebhookState(BaseModel):
    url: str
    format: WebhookFormat = "v1"
    state: Literal["waiting", "pending", "delivered", "failed"] = "waiting"
    """waiting: the task is not finished; pending: a delivery is due or being retried."""
    message_id: str = ""
    deliveries: list[WebhookDelivery] = Field(default_factory=list)
    next_attempt_at: float | None = None
    failure: str | None = None


class ResultFile(BaseModel):
    filename: str
    content_type: str
    size: int
    node: str | None = None
    width: int | None = None
    height: int | None = None


class Attempt(BaseModel):
    number: int
    pod: str
    prompt_id: str
    submitted_at: float
    ended_at: float | None = None
    outcome: str | None = None
    """completed, failed, cancelled or lost."""
    reason: str | None = None


class Progress(BaseModel):
    value: int = 0
    max: int = 0
    node: str | None = None


class TaskError(BaseModel):
    type: str
    message: str
    details: Any = None


class Timings(BaseModel):
    created_at: float = Field(default_factory=now)
    claimed_at: float | None = None
    """A replica took it from the queue (the last time)."""
    pod_ready_at: float | None = None
    """A pod was assigned (after the hold, if any)."""
    submitted_at: float | None = None
    started_at: float | None = None
    """ComfyUI began executing it."""
    finished_at: float | None = None
    hold_seconds: float = 0.0
    """Time spent waiting for a ready pod (cold start or full pods), all attempts."""
    cold_start: bool = False
    """The application had no ready pod when the task wanted one."""


class Task(BaseModel):
    id: str = Field(default_factory=new_task_id)
    kind: Kind = "generate"
    model: str
    workflow: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """Generate tasks: the parameters as applied (canonical names, random seed chosen)."""
    graph: dict[str, Any] | None = None
    """comfyui tasks: the client's API-format workflow."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    webhook: WebhookState | None = None
    client: str = "anonymous"
    """Who asked (a hash of the API key): idempotency keys are scoped by it."""
    idempotency_key: str | None = None
    idempotency_hash: str | None = None
    fingerprint: str = ""
    """Hash of the request; a reused idempotency key with another request is a conflict."""
    external_id: str | None = None
    """comfyui-api requests: the client's `id`."""
    base_url: str = ""
    """Public base URL of the API (…/v1) at acceptance, for result URLs in webhooks."""

    status: Status = "queued"
    phase: Phase = "queued"
    owner: str | None = None
    attempt: int = 0
    max_attempts: int = 2
    prompt_id: str | None = None
    client_id: str | None = None
    """The WebSocket clientId the prompt was submitted with."""
    pod: str | None = None
    excluded_pods: list[str] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)

    seed: int | None = None
    warnings: list[str] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    results: list[ResultFile] = Field(default_factory=list)
    error: TaskError | None = None
    cancel_requested: bool = False
    timings: Timings = Field(default_factory=Timings)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def dump(self) -> str:
        return self.model_dump_json()

    @classmethod
    def load(cls, data: str | bytes) -> Task:
        return cls.model_validate_json(data)
