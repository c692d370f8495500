"""`python -m serverless_comfyui.controller`: run the operator (kopf), in or out of cluster."""

from __future__ import annotations

import kopf

from serverless_comfyui.controller import handlers  # noqa: F401  (registers the handlers)
from serverless_comfyui.controller.settings import OperatorSettings


def main() -> None:
    settings = OperatorSettings()
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint or None,
    )


if __name__ == "__main__":
    main()
