"""`/api/jobs` views of the fake ComfyUI, after `comfy_execution/jobs.py` (ComfyUI 0.8.0)."""

from __future__ import annotations

from typing import Any

from serverless_comfyui.emulator.prompt_queue import QueueItem

PENDING, IN_PROGRESS, COMPLETED, FAILED = "pending", "in_progress", "completed", "failed"
ALL_STATUSES = [PENDING, IN_PROGRESS, COMPLETED, FAILED]
PREVIEWABLE_MEDIA_TYPES = frozenset({"images", "video", "audio"})
THREE_D_EXTENSIONS = (".obj", ".fbx", ".gltf", ".glb")


def _prune(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _metadata(extra_data: dict[str, Any]) -> tuple[Any, Any]:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def _previewable(media_type: str, item: dict[str, Any]) -> bool:
    if media_type in PREVIEWABLE_MEDIA_TYPES:
        return True
    fmt = str(item.get("format", ""))
    if fmt.startswith(("video/", "audio/")):
        return True
    return str(item.get("filename", "")).lower().endswith(THREE_D_EXTENSIONS)


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    count = 0
    preview: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and _previewable(media_type, item):
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


def normalize_queue_item(item: QueueItem, status: str) -> dict[str, Any]:
    create_time, workflow_id = _metadata(item[3])
    return _prune(
        {
            "id": item[1],
            "status": status,
            "priority": item[0],
            "create_time": create_time,
            "outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )


def normalize_history_item(
    prompt_id: str, entry: dict[str, Any], include_outputs: bool = False
) -> dict[str, Any]:
    priority, _, prompt, extra_data, _ = entry["prompt"]
    create_time, workflow_id = _metadata(extra_data)
    status_info = entry.get("status") or {}
    status = FAILED if status_info.get("status_str") == "error" else COMPLETED
    outputs = entry.get("outputs", {})
    count, preview = outputs_summary(outputs)
    start = end = error = None
    for message in status_info.get("messages", []):
        if isinstance(message, list | tuple) and len(message) >= 2 and isinstance(message[1], dict):
            if message[0] == "execution_start":
                start = message[1].get("timestamp")
            elif message[0] in ("execution_success", "execution_error", "execution_interrupted"):
                end = message[1].get("timestamp")
                if message[0] == "execution_error":
                    error = message[1]
    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "preview_output": preview,
            "workflow_id": workflow_id,
        }
    )
    if include_outputs:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def get_job(
    prompt_id: str,
    running: list[QueueItem],
    pending: list[QueueItem],
    history: dict[str, Any],
) -> dict[str, Any] | None:
    if prompt_id in history:
        return normalize_history_item(prompt_id, history[prompt_id], include_outputs=True)
    for item in running:
        if item[1] == prompt_id:
            return normalize_queue_item(item, IN_PROGRESS)
    for item in pending:
        if item[1] == prompt_id:
            return normalize_queue_item(item, PENDING)
    return None


def get_all_jobs(
    running: list[QueueItem],
    pending: list[QueueItem],
    history: dict[str, Any],
    statuses: list[str],
    workflow_id: str | None,
    sort_by: str,
    sort_order: str,
) -> list[dict[str, Any]]:
    jobs = []
    if IN_PROGRESS in statuses:
        jobs += [normalize_queue_item(i, IN_PROGRESS) for i in running]
    if PENDING in statuses:
        jobs += [normalize_queue_item(i, PENDING) for i in pending]
    for prompt_id, entry in history.items():
        failed = (entry.get("status") or {}).get("status_str") == "error"
        if (failed and FAILED in statuses) or (not failed and COMPLETED in statuses):
            jobs.append(normalize_history_item(prompt_id, entry))
    if workflow_id:
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]

    def key(job: dict[str, Any]) -> Any:
        if sort_by == "execution_duration":
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return end - start if end and start else 0
        return job.get("create_time", 0)

    return sorted(jobs, key=key, reverse=sort_order == "desc")
