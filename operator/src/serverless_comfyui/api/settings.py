"""Settings of the generation API (environment variables with the SERVERLESS_COMFYUI_API_ prefix).

The proxy builds one `ApiSettings()` at start and passes it to `create_api_app`. Dict and list
settings are JSON in the environment, e.g.
`SERVERLESS_COMFYUI_API_MODEL_WORKFLOWS='{"flux-dev": "flux_dev_t5fp8"}'`.
"""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVERLESS_COMFYUI_API_", extra="ignore")

    # -- where state lives ------------------------------------------------------------------
    state_dir: Path | None = None
    """Folder (a volume) for the file store and the results when `store_url` / `results_dir`
    are not set. Unset too: a private temporary folder, and tasks do not survive a restart."""
    store_url: str = ""
    """Task store: `redis://[:password@]host:port/db` (or `rediss://`) for several proxy
    replicas, `file:///path` (a directory on a volume) for a single replica; empty:
    `file://<state_dir>/store`."""
    store_prefix: str = "scui:api:"
    """Key prefix in Redis (several installs may share one server)."""
    results_dir: Path = Path()
    """Where finished images are kept, `<results_dir>/<task id>/<file>`. With several proxy
    replicas it must be shared by all of them (a ReadWriteMany volume); unset:
    `<state_dir>/results`."""
    results_subfolder: str = "api"
    """ComfyUI output subfolder of API renders: files are `<subfolder>/<prompt id>_00001_.png`."""
    retention_seconds: float = Field(24 * 3600.0, gt=0)
    """How long finished tasks and their images stay retrievable."""
    sweep_interval_seconds: float = Field(300.0, gt=0)
    """How often expired results (and, in the file store, expired tasks) are deleted."""

    # -- requests ---------------------------------------------------------------------------
    default_workflow: str = "flux_dev_t5fp8"
    """Workflow used when a request names none and `model_workflows` has no entry."""
    model_workflows: dict[str, str] = {}
    """Workflow per application (FluxWorkflow name), for requests that name none."""
    default_model: str | None = None
    """Application for comfyui-api-style requests that name none (see the docs); when unset
    and exactly one application is known, that one."""
    max_batch: int = Field(16, ge=1)
    """Most generate requests in one `POST /v1/batch`."""
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    sync_wait_seconds: float = Field(900.0, gt=0)
    """How long a `mode: sync` request waits for its images; past it the answer is 202 with
    the task (which goes on)."""
    public_base_url: str | None = None
    """Base of result URLs, e.g. `https://img.example.com` (default: from each request's
    Host / X-Forwarded-* headers)."""

    # -- execution --------------------------------------------------------------------------
    worker_concurrency: int = Field(32, ge=1)
    """Tasks one replica executes at once (most of them wait on a pod; the GPU work is
    queued by ComfyUI)."""
    max_prompts_per_pod: int = Field(2, ge=0)
    """Prompts this replica keeps submitted to one pod (its ComfyUI queue) at most; more
    wait, held, so that new pods get work as they come. 0: no limit."""
    max_attempts: int = Field(2, ge=1)
    """Tries of a task whose pod is lost mid-render (2: re-queued once, then failed)."""
    task_hold_seconds: float | None = Field(None, gt=0)
    """How long a task waits for a ready pod before failing (default: the proxy's hold
    timeout). While the application has ready pods that are merely busy it keeps waiting."""
    render_timeout_seconds: float = Field(3600.0, gt=0)
    """A prompt that runs longer is interrupted and its task failed."""
    poll_seconds: float = Field(2.0, gt=0)
    """How often a running task cross-checks the pod's /history and /queue (the WebSocket
    carries progress in between) and the store (cancellation)."""
    missing_model_grace_seconds: float = Field(60.0, ge=0)
    """A task whose application is not in the registry waits this long for it to appear
    (discovery catching up) before failing."""
    pod_lost_grace_seconds: float = Field(20.0, ge=0)
    """A pod that stays unreachable this long while it still is in the registry is lost."""
    owner_ttl_seconds: float = Field(15.0, gt=0)
    """Heartbeat lifetime of a replica's worker: tasks of a replica silent this long are
    recovered by another (or by its successor)."""
    recovery_interval_seconds: float = Field(5.0, gt=0)
    """How often a replica looks for tasks of dead replicas."""
    upstream_timeout_seconds: float = Field(60.0, gt=0)
    """Timeout of one HTTP call to a pod (submit, history, view)."""
    replica_name: str = Field(default_factory=socket.gethostname)
    """This replica (the proxy pod's name); a random suffix is added per process."""

    # -- webhooks ---------------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    """`whsec_<base64>` (Standard Webhooks). Unset: deliveries are not signed (a warning is
    logged at start)."""
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_initial_backoff_seconds: float = Field(2.0, gt=0)
    webhook_max_backoff_seconds: float = Field(600.0, gt=0)
    webhook_timeout_seconds: float = Field(15.0, gt=0)
    webhook_poll_seconds: float = Field(0.5, gt=0)
    webhook_block_private_addresses: bool = False
    """Refuse webhook URLs that resolve to loopback, private or link-local addresses."""

    @field_validator("results_subfolder")
    @classmethod
    def _subfolder(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not all(_SEGMENT.match(p) and ".." not in p for p in parts):
            raise ValueError("must be safe path segments ([A-Za-z0-9_.-], no '..')")
        return "/".join(parts)

    @model_validator(mode="after")
    def _state_defaults(self) -> ApiSettings:
        if not self.store_url or self.results_dir == Path():
            if self.state_dir is None:
                self.state_dir = Path(tempfile.mkdtemp(prefix="serverless-comfyui-api-"))
                self.ephemeral = True
            if not self.store_url:
                self.store_url = f"file://{self.state_dir / 'store'}"
            if self.results_dir == Path():
                self.results_dir = self.state_dir / "results"
        return self

    ephemeral: bool = False
    """Set when neither a store nor a state folder was configured (tasks are not durable)."""

    @field_validator("store_url")
    @classmethod
    def _store(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://", "file://")):
            raise ValueError("must start with redis://, rediss://, unix:// or file://")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            from serverless_comfyui.api.webhooks import secret_key

            secret_key(value.get_secret_value())  # raises ValueError when malformed
            return value
        return None
