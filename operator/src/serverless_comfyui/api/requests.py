"""Turning request bodies into tasks: every check happens here, before anything is stored or
any pod is woken. Problems are collected (all of them, not the first) as `{field, rule,
message}` and answered 422."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serverless_comfyui.api.errors import Issue, invalid, issue
from serverless_comfyui.api.models import (
    Delivery,
    ImageFormat,
    OutputSpec,
    Task,
    WebhookFormat,
    WebhookState,
)
from serverless_comfyui.api.settings import ApiSettings
from serverless_comfyui.proxy.registry import Registry
from serverless_comfyui.workflows import ParameterError, UnknownWorkflowError, WorkflowLibrary

#: Fields of a generate request that are not workflow parameters.
ENVELOPE = ("model", "workflow", "mode", "output", "webhook")
MODES = ("sync", "async")
FORMATS: dict[str, ImageFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
DELIVERIES: tuple[Delivery, ...] = ("base64", "url")
PLACEHOLDER_PROMPT_ID = "00000000-0000-0000-0000-000000000000"
MAX_KEY_LENGTH = 255
MAX_URL_LENGTH = 2048

WorkflowOf = Callable[[str], str | None]


@dataclass
class Caller:
    """Who sent the request and where the API is, as seen by the handler."""

    client: str
    """A hash of the API key, or "anonymous": idempotency keys are scoped by it."""
    base_url: str
    """The API's public base, e.g. https://host/v1 (result URLs are built on it)."""
    idempotency_key: str | None = None


@dataclass
class Prepared:
    task: Task
    mode: str


def fingerprint(body: Any) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def idempotency_hash(client: str, key: str) -> str:
    return hashlib.sha256(f"{client}\n{key}".encode()).hexdigest()


def check_idempotency_key(key: str | None, field: str = "Idempotency-Key") -> list[Issue]:
    if key is None:
        return []
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        return [issue(field, "format", f"must be 1-{MAX_KEY_LENGTH} printable characters")]
    return []


def check_url(value: Any, field: str) -> tuple[str | None, list[Issue]]:
    if not isinstance(value, str):
        return None, [issue(field, "type", "must be a string (an http or https URL)")]
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, [issue(field, "format", "must be an absolute http or https URL")]
    if len(value) > MAX_URL_LENGTH:
        return None, [issue(field, "max_length", f"must be at most {MAX_URL_LENGTH} characters")]
    return value, []


def parse_output(
    value: Any, field: str, default_delivery: Delivery
) -> tuple[OutputSpec, list[Issue]]:
    spec = OutputSpec(delivery=default_delivery)
    if value is None:
        return spec, []
    if not isinstance(value, Mapping):
        return spec, [issue(field, "type", "must be an object {format, quality, delivery}")]
    errors: list[Issue] = []
    for key in value:
        if key not in ("format", "quality", "delivery"):
            errors.append(
                issue(f"{field}.{key}", "unknown", "unknown field (format, quality, delivery)")
            )
    fmt = value.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
            errors.append(issue(f"{field}.format", "enum", "must be one of png, jpeg, webp"))
        else:
            spec.format = FORMATS[fmt.lower()]
    quality = value.get("quality")
    if quality is not None:
        if (
            isinstance(quality, bool)
            or not isinstance(quality, int | float)
            or quality != int(quality)
        ):
            errors.append(issue(f"{field}.quality", "type", "must be an integer"))
        elif not 1 <= int(quality) <= 100:
            rule = "min" if quality < 1 else "max"
            errors.append(issue(f"{field}.quality", rule, "must be between 1 and 100"))
        else:
            spec.quality = int(quality)
    delivery = value.get("delivery")
    if delivery is not None:
        if delivery not in DELIVERIES:
            errors.append(issue(f"{field}.delivery", "enum", "must be one of base64, url"))
        else:
            spec.delivery = delivery
    return spec, errors


def parse_webhook(
    value: Any, field: str, fmt: WebhookFormat
) -> tuple[WebhookState | None, list[Issue]]:
    if value is None:
        return None, []
    if isinstance(value, Mapping):
        unknown = [k for k in value if k != "url"]
        errors = [issue(f"{field}.{k}", "unknown", "unknown field (url)") for k in unknown]
        if "url" not in value:
            return None, [*errors, issue(f"{field}.url", "required", "is required")]
        url, problems = check_url(value["url"], f"{field}.url")
        errors += problems
    else:
        url, errors = check_url(value, field)
    if errors or url is None:
        return None, errors
    return WebhookState(url=url, format=fmt), []


def resolve_model(model: Any, registry: Registry, field: str = "model") -> list[Issue]:
    if model is None:
        return [issue(field, "required", "is required: the application (FluxWorkflow) name")]
    if not isinstance(model, str) or not model:
        return [issue(field, "type", "must be a non-empty string")]
    if registry.get(model) is None:
        known = ", ".join(sorted(registry.apps)) or "none"
        return [issue(field, "unknown", f"unknown application {model!r} (known: {known})")]
    return []


def prepare_generate(
    body: Any,
    *,
    caller: Caller,
    registry: Registry,
    library: WorkflowLibrary,
    settings: ApiSettings,
    workflow_of: WorkflowOf | None = None,
    prefix: str = "",
    force_mode: str | None = None,
) -> Prepared:
    """A generate request body -> a task ready to store (raises ApiError 422)."""
    if not isinstance(body, Mapping):
        raise invalid([issue(prefix.rstrip("."), "body", "must be a JSON object")])
    errors = check_idempotency_key(caller.idempotency_key)
    model = body.get("model")
    errors += resolve_model(model, registry, f"{prefix}model")

    mode = body.get("mode", "sync") if force_mode is None else force_mode
    if mode not in MODES:
        errors.append(issue(f"{prefix}mode", "enum", "must be one of sync, async"))
        mode = "sync"
    output, problems = parse_output(
        body.get("output"), f"{prefix}output", "base64" if mode == "sync" else "url"
    )
    errors += problems
    webhook, problems = parse_webhook(body.get("webhook"), f"{prefix}webhook", "v1")
    errors += problems

    workflow_name = body.get("workflow")
    if workflow_name is None and isinstance(model, str):
        workflow_name = (
            (workflow_of(model) if workflow_of is not None else None)
            or settings.model_workflows.get(model)
            or settings.default_workflow
        )
    workflow = None
    if not isinstance(workflow_name, str):
        errors.append(issue(f"{prefix}workflow", "type", "must be a string (a workflow name)"))
    else:
        try:
            workflow = library.get(workflow_name)
        except UnknownWorkflowError as exc:
            errors.append(issue(f"{prefix}workflow", "unknown", str(exc)))

    params = {k: v for k, v in body.items() if k not in ENVELOPE}
    validated = None
    if workflow is not None:
        try:
            validated = workflow.validate_params(params)
        except ParameterError as exc:
            errors += [
                issue(f"{prefix}{e.field}" if e.field else prefix.rstrip("."), e.rule, e.message)
                for e in exc.errors
            ]
    if errors or workflow is None or validated is None:
        raise invalid(errors)
    rendered = workflow.render(
        validated, prompt_id=PLACEHOLDER_PROMPT_ID, output_prefix=settings.results_subfolder
    )
    assert isinstance(model, str)
    task = Task(
        kind="generate",
        model=model,
        workflow=workflow.name,
        params=rendered.params,
        output=output,
        webhook=webhook,
        client=caller.client,
        idempotency_key=caller.idempotency_key,
        idempotency_hash=(
            idempotency_hash(caller.client, caller.idempotency_key)
            if caller.idempotency_key
            else None
        ),
        fingerprint=fingerprint({"kind": "generate", **body, "mode": mode}),
        base_url=caller.base_url,
        seed=rendered.seed,
        warnings=list(rendered.warnings),
        ignored=list(rendered.ignored),
        max_attempts=settings.max_attempts,
    )
    return Prepared(task=task, mode=mode)


def graph_problems(graph: Any) -> list[Issue]:
    """A light check of a client's API-format graph; ComfyUI validates the rest (its 400 is
    relayed unchanged)."""
    if not isinstance(graph, Mapping) or not graph:
        return [issue("prompt", "type", "must be a non-empty object of nodes (API format)")]
    errors: list[Issue] = []
    has_output = False
    for node_id, node in graph.items():
        where = f"prompt.{node_id}"
        if not isinstance(node, Mapping):
            errors.append(issue(where, "type", "a node must be an object"))
            continue
        if not isinstance(node.get("class_type"), str):
            errors.append(issue(f"{where}.class_type", "required", "must be a string"))
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            errors.append(issue(f"{where}.inputs", "required", "must be an object"))
        elif isinstance(inputs.get("filename_prefix"), str):
            has_output = True
    if not errors and not has_output:
        errors.append(
            issue(
                "prompt",
                "no_output",
                "the workflow has no node that saves images (an input filename_prefix, "
                "e.g. SaveImage)",
            )
        )
    return errors


def prepare_comfyui(
    body: Any,
    *,
    model: Any,
    caller: Caller,
    registry: Registry,
    settings: ApiSettings,
    model_field: str = "model",
) -> Prepared:
    """A comfyui-api `POST /prompt` body -> a task (raises ApiError 422). Fields of
    comfyui-api that need storage backends (s3, azure_blob_upload, hf_upload, http_upload,
    compress_outputs) are refused; other unknown fields are ignored, as there."""
    if not isinstance(body, Mapping):
        raise invalid([issue("", "body", "must be a JSON object")])
    errors = check_idempotency_key(caller.idempotency_key)
    errors += resolve_model(model, registry, model_field)
    for name in ("s3", "azure_blob_upload", "hf_upload", "http_upload", "compress_outputs"):
        if body.get(name):
            errors.append(
                issue(
                    name,
                    "unsupported",
                    "uploads to storage are not supported here; images "
                    "come back in the answer or the webhook, and stay at the task's result URLs",
                )
            )
    if "prompt" not in body:
        errors.append(issue("prompt", "required", "is required: the workflow in API format"))
    else:
        errors += graph_problems(body["prompt"])
    external_id = body.get("id")
    if external_id is not None and (
        not isinstance(external_id, str) or not 0 < len(external_id) <= 128
    ):
        errors.append(issue("id", "type", "must be a string of 1-128 characters"))
    webhook: WebhookState | None = None
    for name in ("webhook_v2", "webhook"):
        if body.get(name) is not None:
            webhook, problems = parse_webhook(body[name], name, "comfyui-api")
            errors += problems
            break
    output = OutputSpec(delivery="base64")
    convert = body.get("convert_output")
    if convert is not None:
        if not isinstance(convert, Mapping):
            errors.append(issue("convert_output", "type", "must be an object {format, options}"))
        else:
            fmt = convert.get("format")
            if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
                errors.append(
                    issue("convert_output.format", "enum", "must be one of png, jpeg, jpg, webp")
                )
            else:
                output.format = FORMATS[fmt.lower()]
            options = convert.get("options") or {}
            if not isinstance(options, Mapping):
                errors.append(issue("convert_output.options", "type", "must be an object"))
            else:
                spec, problems = parse_output(
                    {"quality": options["quality"]} if "quality" in options else None,
                    "convert_output.options",
                    "base64",
                )
                errors += problems
                output.quality = spec.quality
    if errors:
        raise invalid(errors)
    assert isinstance(model, str)
    key = caller.idempotency_key or (external_id if isinstance(external_id, str) else None)
    task = Task(
        kind="comfyui",
        model=model,
        graph=dict(body["prompt"]),
        output=output,
        webhook=webhook,
        client=caller.client,
        idempotency_key=key,
        idempotency_hash=idempotency_hash(caller.client, f"comfyui-api:{key}") if key else None,
        fingerprint=fingerprint({"kind": "comfyui", "model": model, "prompt": body["prompt"]}),
        external_id=external_id if isinstance(external_id, str) else None,
        base_url=caller.base_url,
        max_attempts=settings.max_attempts,
    )
    return Prepared(task=task, mode="async" if webhook is not None else "sync")
