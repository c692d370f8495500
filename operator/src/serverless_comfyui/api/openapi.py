"""The OpenAPI 3.1 description of the generation API (`GET /v1/openapi.json`) and a
self-contained HTML page rendered from it (`GET /v1/docs`: no CDN, works offline)."""

from __future__ import annotations

import html
import json
from typing import Any

from serverless_comfyui.api.settings import ApiSettings
from serverless_comfyui.workflows import WorkflowLibrary

API_VERSION = "1.0.0"

INTRO = """\
Generate images with the FluxWorkflow applications this proxy serves. A request names the
application (`model`) and, optionally, a workflow of the library; the other fields are that
workflow's parameters (`prompt`, `width`, `height`, `steps`, `cfg_scale`/`guidance`, `seed`,
`loras`, ...). Every accepted request becomes a **task** kept in the task store until it ends
and for the retention period after: it survives proxy restarts, pods lost mid-render (re-queued
once onto another pod) and cold starts (held until the application is up).

* `mode: sync` (default) answers with the images once done (base64 by default), or 202 with
  the task if it takes longer than the sync limit.
* `mode: async` answers 202 at once with the task and its `Location`; follow it with
  `GET /v1/tasks/{id}`, the server-sent events of `/v1/tasks/{id}/events`, or a webhook.
* Webhooks are Standard Webhooks (`webhook-id`, `webhook-timestamp`,
  `webhook-signature: v1,<base64 HMAC-SHA256>` with the install's `whsec_` secret), retried
  with exponential backoff; every attempt is recorded on the task.
* `Idempotency-Key: <key>` on a POST makes retries safe: the same key (per API key) returns
  the same task and never renders twice; reusing it for another request is a 409.
* Invalid requests get 422 with `error.errors: [{field, rule, message}]`; nothing is queued
  and no GPU is woken.

A comfyui-api-compatible endpoint (`POST /comfyui-api/prompt` or
`POST /comfyui-api/{model}/prompt`, raw API-format workflows) is described at the end.
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"application/json": content}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


def build_spec(library: WorkflowLibrary, settings: ApiSettings) -> dict[str, Any]:
    default = settings.default_workflow
    default_params: dict[str, Any] = {}
    if default in library:
        default_params = dict(library.get(default).parameters_schema()["properties"])
    workflow_schemas = {
        f"Params_{wf.name}": {
            k: v for k, v in wf.parameters_schema().items() if k not in ("$schema",)
        }
        for wf in library
    }
    generate_example = {
        "model": "flux-dev",
        "prompt": "a lighthouse on a cliff at dawn, photographic",
        "width": 1024,
        "height": 1024,
        "steps": 25,
        "cfg_scale": 3.5,
        "seed": 42,
        "mode": "sync",
        "output": {"format": "jpeg", "quality": 90, "delivery": "base64"},
    }
    task_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Retry-safe key (1-255 printable characters), scoped by API key.",
        "schema": {"type": "string", "maxLength": 255},
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {"type": "array", "items": _ref("Issue")},
                    },
                }
            },
        },
        "Issue": {
            "type": "object",
            "required": ["field", "rule", "message"],
            "properties": {
                "field": {"type": "string", "description": "e.g. width, loras[1].strength"},
                "rule": {
                    "type": "string",
                    "description": "required, unknown, type, min, max, multiple_of, enum, "
                    "min_length, max_length, max_items, format, conflict, reserved, "
                    "unsupported, body, json, no_output",
                },
                "message": {"type": "string"},
            },
        },
        "Output": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "format": {"enum": ["png", "jpeg", "webp"], "default": "png"},
                "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
                "delivery": {
                    "enum": ["base64", "url"],
                    "description": "default: base64 for sync requests, url for async ones",
                },
            },
        },
        "Webhook": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {"url": {"type": "string", "format": "uri"}},
        },
        "GenerateRequest": {
            "type": "object",
            "required": ["model", "prompt"],
            "description": "The envelope fields below plus the workflow's parameters "
            f"(shown: those of {default}; see the Params_* schemas for every workflow).",
            "properties": {
                "model": {"type": "string", "description": "the application (FluxWorkflow)"},
                "workflow": {
                    "type": "string",
                    "enum": library.names(),
                    "description": "a workflow of the library; default: the application's "
                    f"(setting model_workflows), else {default}",
                },
                "mode": {"enum": ["sync", "async"], "default": "sync"},
                "output": _ref("Output"),
                "webhook": _ref("Webhook"),
                **default_params,
            },
            "additionalProperties": True,
        },
        "BatchRequest": {
            "type": "object",
            "required": ["requests"],
            "properties": {
                "requests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_batch,
                    "items": _ref("GenerateRequest"),
                }
            },
        },
        "Result": {
            "type": "object",
            "properties": {
                "filename": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
                "content_type": {"type": "string"},
                "size": {"type": "integer"},
                "width": {"type": ["integer", "null"]},
                "height": {"type": ["integer", "null"]},
                "base64": {"type": "string", "description": "with delivery base64"},
            },
        },
        "Task": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "object": {"const": "task"},
                "model": {"type": "string"},
                "workflow": {"type": ["string", "null"]},
                "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
                "phase": {
                    "enum": [
                        "queued",
                        "waiting_for_pod",
                        "submitting",
                        "submitted",
                        "running",
                        "collecting",
                        "done",
                    ]
                },
                "queue_position": {"type": ["integer", "null"]},
                "progress": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "integer"},
                        "max": {"type": "integer"},
                        "percent": {"type": ["number", "null"]},
                        "node": {"type": ["string", "null"]},
                    },
                },
                "seed": {"type": ["integer", "null"], "description": "the seed actually used"},
                "warnings": {"type": "array", "items": {"type": "string"}},
                "ignored": {"type": "array", "items": {"type": "string"}},
                "params": {"type": "object"},
                "results": {"type": "array", "items": _ref("Result")},
                "error": {
                    "type": ["object", "null"],
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {},
                    },
                },
                "attempt": {"type": "integer"},
                "attempts": {"type": "array", "items": {"type": "object"}},
                "webhook": {"type": ["object", "null"]},
                "timings": {
                    "type": "object",
                    "properties": {
                        "created_at": {"type": "string", "format": "date-time"},
                        "started_at": {"type": ["string", "null"]},
                        "finished_at": {"type": ["string", "null"]},
                        "queued_seconds": {"type": ["number", "null"]},
                        "hold_seconds": {"type": "number"},
                        "cold_start": {"type": "boolean"},
                        "run_seconds": {"type": ["number", "null"]},
                        "total_seconds": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "ComfyuiApiRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "object", "description": "a ComfyUI workflow in API format"},
                "id": {
                    "type": "string",
                    "description": "your request id (also an idempotency key)",
                },
                "model": {"type": "string"},
                "webhook_v2": {"type": "string", "format": "uri"},
                "webhook": {"type": "string", "format": "uri", "description": "as webhook_v2"},
                "convert_output": {
                    "type": "object",
                    "properties": {
                        "format": {"enum": ["png", "jpeg", "jpg", "webp"]},
                        "options": {
                            "type": "object",
                            "properties": {
                                "quality": {"type": "integer", "minimum": 1, "maximum": 100}
                            },
                        },
                    },
                },
            },
        },
        **workflow_schemas,
    }
    paths: dict[str, Any] = {
        "/generate": {
            "post": {
                "summary": "Generate images (sync or async)",
                "description": "Validates, stores and queues a task. sync: waits up to "
                f"{settings.sync_wait_seconds:.0f}s (setting sync_wait_seconds) and answers the "
                "task with its images; failed tasks answer 422 (ComfyUI refused the graph), "
                "503 (no pod could start) or 502 (other failures), cancelled ones 409.",
                "parameters": [idem],
                "requestBody": {
                    "required": True,
                    "content": _json(_ref("GenerateRequest"), generate_example),
                },
                "responses": {
                    "200": {"description": "completed (sync)", "content": _json(_ref("Task"))},
                    "202": {
                        "description": "accepted (async, or sync past its wait limit)",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": _json(_ref("Task")),
                    },
                    "409": _error("idempotency key reused with another request"),
                    "422": _error("invalid request: every field and rule that failed"),
                    "502": _error("the generation failed (sync)"),
                    "503": _error("no pod could be started (sync), or the task store is down"),
                },
            }
        },
        "/batch": {
            "post": {
                "summary": "Queue several generate requests, each its own async task",
                "parameters": [idem],
                "requestBody": {"required": True, "content": _json(_ref("BatchRequest"))},
                "responses": {
                    "202": {"description": "accepted", "content": _json({"type": "object"})},
                    "422": _error("an invalid item (none is queued), or too many"),
                },
            }
        },
        "/tasks/{task_id}": {
            "get": {
                "summary": "A task: status, queue position, progress, results, error, timings",
                "parameters": [task_id],
                "responses": {
                    "200": {"description": "the task", "content": _json(_ref("Task"))},
                    "404": _error("unknown (or expired) task"),
                },
            },
            "delete": {
                "summary": "Cancel a task (dequeued, or removed from ComfyUI's queue, or "
                "interrupted while it runs)",
                "parameters": [task_id],
                "responses": {
                    "200": {"description": "cancelled", "content": _json(_ref("Task"))},
                    "404": _error("unknown task"),
                    "409": _error("the task had already finished"),
                },
            },
        },
        "/tasks/{task_id}/events": {
            "get": {
                "summary": "Server-sent events of a task until it ends",
                "description": "Events `status`, `progress` ({value, max, node}), then one of "
                "`completed` (the task with its results), `failed` or `cancelled`, in order, "
                "each with an `id:`; reconnect with `Last-Event-ID` to resume. Comments "
                "`: keepalive` every 15 s of silence.",
                "parameters": [task_id],
                "responses": {
                    "200": {
                        "description": "the event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _error("unknown task"),
                },
            }
        },
        "/results/{task_id}/{filename}": {
            "get": {
                "summary": "An image of a finished task (kept for the retention period)",
                "parameters": [
                    task_id,
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the image",
                        "content": {
                            "image/png": {},
                            "image/jpeg": {},
                            "image/webp": {},
                        },
                    },
                    "404": _error("unknown or expired"),
                },
            }
        },
        "/workflows": {
            "get": {
                "summary": "The workflow library: names, descriptions, parameter schemas",
                "responses": {
                    "200": {"description": "the workflows", "content": _json({"type": "object"})}
                },
            }
        },
        "/workflows/{name}": {
            "get": {
                "summary": "One workflow and its parameters (JSON Schema)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "the workflow", "content": _json({"type": "object"})},
                    "404": _error("unknown workflow"),
                },
            }
        },
        "/comfyui-api/prompt": {
            "servers": [{"url": "/", "description": "the proxy root (not under /v1)"}],
            "post": {
                "summary": "comfyui-api compatible: run a raw API-format workflow",
                "description": "SaladTechnologies/comfyui-api's `POST /prompt`: `{prompt, id?, "
                "webhook_v2?, convert_output?}` answers `{id, prompt, images: [base64...], "
                "filenames, stats}`; with a webhook it answers 202 at once and delivers "
                "`prompt.complete` / `prompt.failed`. The application is the path segment of "
                "`/comfyui-api/{model}/prompt`, else the `model` field, `?model=`, the "
                "`X-Model` header, the setting default_model, or the only application. "
                "Existing clients (e.g. FluxEz) only change their base URL to "
                "`https://<proxy>/comfyui-api/<model>`. ComfyUI's own 400 validation errors "
                "are relayed unchanged.",
                "parameters": [idem],
                "requestBody": {"required": True, "content": _json(_ref("ComfyuiApiRequest"))},
                "responses": {
                    "200": {"description": "the images", "content": _json({"type": "object"})},
                    "202": {
                        "description": "accepted (webhook)",
                        "content": _json({"type": "object"}),
                    },
                    "400": {"description": "ComfyUI refused the workflow (its body, unchanged)"},
                    "422": _error("invalid request"),
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serverless-comfyui generation API",
            "version": API_VERSION,
            "description": INTRO,
        },
        "servers": [{"url": "/v1"}],
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
code,pre{background:#f4f4f4;border-radius:4px}pre{padding:.8em;overflow:auto}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
.m{font-weight:bold;font-family:monospace}h3{margin-top:2em}
"""


def _md(text: str) -> str:
    """Very small Markdown: `code`, **bold**, paragraphs and "* " bullet lists."""
    out: list[str] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        if not lines:
            continue
        if lines[0].startswith("* "):
            items: list[str] = []
            for line in lines:
                if line.startswith("* "):
                    items.append(line[2:])
                else:
                    items[-1] += " " + line.strip()
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    for i in range(1, len(parts), 2):
        parts[i] = f"<code>{parts[i]}</code>"
    joined = "".join(parts)
    bold = joined.split("**")
    for i in range(1, len(bold), 2):
        bold[i] = f"<b>{bold[i]}</b>"
    return "".join(bold)


def render_docs(spec: dict[str, Any], library: WorkflowLibrary) -> str:
    rows = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "servers":
                continue
            full = path if path.startswith("/comfyui-api") else f"/v1{path}"
            details = op.get("description")
            more = f"<br><small>{_inline(details)}</small>" if details else ""
            rows.append(
                f"<tr><td class=m>{method.upper()}</td><td><code>{html.escape(full)}</code></td>"
                f"<td>{_inline(op.get('summary', ''))}{more}</td></tr>"
            )
    workflows = []
    for wf in library:
        schema = wf.parameters_schema()
        params = []
        for name, prop in schema["properties"].items():
            bounds = ", ".join(
                f"{k}={json.dumps(prop[k])}"
                for k in ("default", "minimum", "maximum", "multipleOf", "enum", "maxItems")
                if k in prop
            )
            required = "yes" if name in schema.get("required", []) else ""
            params.append(
                f"<tr><td><code>{html.escape(name)}</code></td>"
                f"<td>{html.escape(json.dumps(prop.get('type', '')))}</td><td>{required}</td>"
                f"<td>{html.escape(bounds)}</td>"
                f"<td>{html.escape(prop.get('description', ''))}</td></tr>"
            )
        workflows.append(
            f"<h3><code>{html.escape(wf.name)}</code></h3><p>{html.escape(wf.description)}</p>"
            "<table><tr><th>parameter</th><th>type</th><th>required</th><th>bounds</th>"
            "<th>description</th></tr>" + "".join(params) + "</table>"
        )
    example = json.dumps(
        spec["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["example"],
        indent=2,
    )
    curl = (
        "curl -sS https://&lt;proxy&gt;/v1/generate \\\n"
        "  -H 'Authorization: Bearer &lt;key&gt;' -H 'Content-Type: application/json' \\\n"
        f"  -d '{html.escape(example)}'"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(spec['info']['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(spec['info']['title'])}</h1>"
        f"<p>Version {html.escape(spec['info']['version'])} &middot; "
        "<a href=openapi.json>OpenAPI 3.1 (JSON)</a></p>"
        f"{_md(spec['info']['description'])}"
        f"<h2>Example</h2><pre>{curl}</pre>"
        "<h2>Endpoints</h2><table><tr><th>method</th><th>path</th><th>what</th></tr>"
        + "".join(rows)
        + "</table><h2>Workflows and their parameters</h2>"
        + "".join(workflows)
        + "</body></html>"
    )
