"""Building the API's aiohttp sub-applications for the proxy to mount.

    api = create_api_app(api_settings, registry, control.wake, session,
                         hold_timeout_seconds=settings.hold_timeout_seconds,
                         max_held=settings.max_held_per_model)
    app.add_subapp("/v1/", api)                                # the generation API
    app.add_subapp("/comfyui-api/", create_comfyui_api_app(api))   # comfyui-api compatible

or, the same in one call: `mount_api(app, api_settings, registry, control.wake, session, ...)`.
The /v1 sub-application owns the engine's lifecycle (worker, webhooks, sweep: started and
stopped with the parent application); the comfyui-api one shares it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from serverless_comfyui.api.http import SERVICE, V1_APP, error_middleware, not_found
from serverless_comfyui.api.requests import WorkflowOf
from serverless_comfyui.api.routes_comfyui_api import routes as comfyui_api_routes
from serverless_comfyui.api.routes_v1 import routes as v1_routes
from serverless_comfyui.api.service import ApiService
from serverless_comfyui.api.settings import ApiSettings
from serverless_comfyui.api.store import TaskStore
from serverless_comfyui.proxy.registry import App, Registry
from serverless_comfyui.workflows import WorkflowLibrary

Wake = Callable[[App], Awaitable[None]]


def create_api_app(
    settings: ApiSettings,
    registry: Registry,
    wake: Wake,
    session: aiohttp.ClientSession | None = None,
    hold_timeout_seconds: float = 600.0,
    max_held: int = 100,
    *,
    library: WorkflowLibrary | None = None,
    workflow_of: WorkflowOf | None = None,
    store: TaskStore | None = None,
    synced: Callable[[], bool] | None = None,
) -> web.Application:
    """The /v1 sub-application. `session` is used for every call to pods and webhook
    receivers (None: the API opens its own); `wake` is the proxy's Control.wake;
    `hold_timeout_seconds` and `max_held` bound how long and how many tasks wait for a pod.
    `workflow_of(model)` may give an application's own workflow (from its FluxWorkflow);
    `synced()` says discovery has filled the registry (Control.synced): the worker takes and
    recovers tasks only from then on. `library` and `store` replace the defaults (tests)."""
    service = ApiService(
        settings,
        registry,
        wake,
        session,
        hold_timeout_seconds,
        max_held,
        library=library,
        workflow_of=workflow_of,
        store=store,
        synced=synced,
    )
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SERVICE] = service
    app[V1_APP] = app
    app.add_routes(v1_routes)
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def create_comfyui_api_app(api_app: web.Application) -> web.Application:
    """The comfyui-api compatible sub-application, sharing `api_app`'s engine. Mount it
    together with `api_app` (which starts and stops the engine)."""
    service = api_app[SERVICE]
    app = web.Application(
        client_max_size=service.settings.max_body_bytes, middlewares=[error_middleware]
    )
    app[SERVICE] = service
    app[V1_APP] = api_app
    app.add_routes(comfyui_api_routes)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def mount_api(
    parent: web.Application,
    settings: ApiSettings,
    registry: Registry,
    wake: Wake,
    session: aiohttp.ClientSession | None = None,
    hold_timeout_seconds: float = 600.0,
    max_held: int = 100,
    *,
    v1_prefix: str = "/v1/",
    comfyui_api_prefix: str | None = "/comfyui-api/",
    library: WorkflowLibrary | None = None,
    workflow_of: WorkflowOf | None = None,
    store: TaskStore | None = None,
    synced: Callable[[], bool] | None = None,
) -> ApiService:
    """Mount the generation API (and the comfyui-api endpoint) on the proxy application."""
    api = create_api_app(
        settings,
        registry,
        wake,
        session,
        hold_timeout_seconds,
        max_held,
        library=library,
        workflow_of=workflow_of,
        store=store,
        synced=synced,
    )
    parent.add_subapp(v1_prefix, api)
    if comfyui_api_prefix:
        parent.add_subapp(comfyui_api_prefix, create_comfyui_api_app(api))
    return api[SERVICE]
