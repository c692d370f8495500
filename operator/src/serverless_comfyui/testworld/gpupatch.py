"""`python -m serverless_comfyui.testworld.gpupatch --kubeconfig K --node N --gpus 8`: makes a real
node advertise fake GPUs. There is no device plugin: the extended resource `nvidia.com/gpu` is
added to the Node's status capacity (and allocatable) with a JSON patch on the status
subresource, the documented way to advertise an extended resource, and added again whenever the
node's status lacks it (the kubelet may drop it when it re-registers)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from kubernetes_asyncio import client, config, watch

RESOURCE = "nvidia.com/gpu"
log = logging.getLogger("gpupatch")


def patch_ops(gpus: int) -> list[dict[str, str]]:
    key = RESOURCE.replace("/", "~1")
    return [
        {"op": "add", "path": f"/status/{field}/{key}", "value": str(gpus)}
        for field in ("capacity", "allocatable")
    ]


def needs_patch(node: Any, gpus: int) -> bool:
    status = node.status
    want = str(gpus)
    return (status.capacity or {}).get(RESOURCE) != want or (status.allocatable or {}).get(
        RESOURCE
    ) != want


async def keep_gpus(core: client.CoreV1Api, node: str, gpus: int) -> None:
    selector = f"metadata.name={node}"
    while True:
        try:
            stream = watch.Watch().stream(
                core.list_node, field_selector=selector, timeout_seconds=300
            )
            async for event in stream:
                obj = event["object"]
                if event["type"] != "DELETED" and needs_patch(obj, gpus):
                    await core.patch_node_status(node, patch_ops(gpus))
                    log.info("advertised %s=%d on %s", RESOURCE, gpus, node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # survive apiserver hiccups and 410 Gone: watch again
            log.warning("node watch interrupted (%s); watching again", exc)
            await asyncio.sleep(0.5)


async def run(kubeconfig: str, node: str, gpus: int) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        await keep_gpus(client.CoreV1Api(api), node, gpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(args.kubeconfig, args.node, args.gpus))


if __name__ == "__main__":
    main()
