"""A thin async Kubernetes client for the operator: server-side apply, get, list, delete and
status patches on the few kinds we own, over kubernetes_asyncio's generic request."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.crd.models import API_VERSION, PLURAL

FIELD_MANAGER = "serverless-comfyui-operator"

# (apiVersion, kind) -> URL prefix and plural
_PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    (API_VERSION, "FluxWorkflow"): PLURAL,
}


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        **query: str,
    ) -> dict[str, Any]:
        data = await self._api.call_api(
            path,
            method.upper(),
            path_params={},
            query_params=list(query.items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            response_types_map={200: "object", 201: "object", 202: "object"},
            _return_http_data_only=True,
        )
        return data if isinstance(data, dict) else {}

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the operator owns every field it sets; repeating is a no-op."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return await self._request(
            "patch",
            path,
            body=obj,
            content_type="application/apply-patch+yaml",
            fieldManager=FIELD_MANAGER,
            force="true",
        )

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("get", resource_path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        data = await self._request(
            "get", resource_path(api_version, kind, namespace), labelSelector=selector
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            await self._request(
                "delete",
                resource_path(api_version, kind, namespace, name),
                propagationPolicy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        path = resource_path(api_version, kind, namespace, name) + "/status"
        await self._request(
            "patch",
            path,
            body={"status": status},
            content_type="application/merge-patch+json",
        )
