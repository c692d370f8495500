"""A pod's volumes as host directories, for the processes the pod runner starts in its place.

No container runs, so there is no mount namespace: instead each volume mount becomes a host
directory, and container paths in the process's arguments and environment are rewritten to
those directories. ConfigMaps and Secrets are written out as files, emptyDirs are fresh folders,
and a PVC resolves through its bound PersistentVolume, which in the test world is a hostPath
(`create_hostpath_claim`), so two pods mounting the same claim share the same files, as they
would on a real ReadWriteMany volume.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client


async def _volume_dir(
    api: client.CoreV1Api, namespace: str, volume: Any, scratch: Path
) -> Path | None:
    name = str(volume.name)
    if volume.config_map is not None:
        cm = await api.read_namespaced_config_map(volume.config_map.name, namespace)
        folder = scratch / "configmaps" / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in (cm.data or {}).items():
            (folder / key).write_text(value)
        return folder
    if volume.secret is not None:
        secret = await api.read_namespaced_secret(volume.secret.secret_name, namespace)
        folder = scratch / "secrets" / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in (secret.data or {}).items():
            (folder / key).write_bytes(base64.b64decode(value))
        return folder
    if volume.empty_dir is not None:
        folder = scratch / "emptydir" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if volume.persistent_volume_claim is not None:
        claim = await api.read_namespaced_persistent_volume_claim(
            volume.persistent_volume_claim.claim_name, namespace
        )
        pv = await api.read_persistent_volume(claim.spec.volume_name)
        if pv.spec.host_path is None:
            raise ValueError(f"PV {pv.metadata.name} is not a hostPath volume")
        return Path(pv.spec.host_path.path)
    return None


async def resolve_mounts(
    api: client.CoreV1Api, pod: Any, container: Any, scratch: Path
) -> dict[str, Path]:
    """{container mount path: host directory} for the container's volume mounts."""
    volumes = {v.name: v for v in pod.spec.volumes or []}
    mounts: dict[str, Path] = {}
    for mount in container.volume_mounts or []:
        volume = volumes.get(mount.name)
        if volume is None:
            continue
        folder = await _volume_dir(api, pod.metadata.namespace, volume, scratch)
        if folder is None:
            continue
        if mount.sub_path:
            folder = folder / mount.sub_path
        folder.mkdir(parents=True, exist_ok=True)
        mounts[mount.mount_path.rstrip("/") or "/"] = folder
    return mounts


def translate(value: str, mounts: dict[str, Path]) -> str:
    """Rewrite a container path (alone or as `--flag=/path`) to its host path."""
    if value.startswith("-") and "=" in value:
        flag, _, rest = value.partition("=")
        return f"{flag}={translate(rest, mounts)}"
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + value[len(mount_path) :]
    return value


async def resolve_env(
    api: client.CoreV1Api, namespace: str, container: Any, mounts: dict[str, Path]
) -> dict[str, str]:
    """The container's environment: literal values (paths translated) and Secret/ConfigMap
    references read from the API, as the kubelet would."""
    env: dict[str, str] = {}
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = translate(var.value or "", mounts)
            continue
        ref = var.value_from.secret_key_ref or var.value_from.config_map_key_ref
        if ref is None:
            continue
        if var.value_from.secret_key_ref is not None:
            secret = await api.read_namespaced_secret(ref.name, namespace)
            env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
        else:
            cm = await api.read_namespaced_config_map(ref.name, namespace)
            env[var.name] = (cm.data or {})[ref.key]
    return env
