"""The HTTP surface of the local platform: which endpoint answers which request, and errors.

The Mosaic API's methods and paths come from `contract.API_ROUTES`, the table the client is
built from too; the endpoints themselves live in `local/endpoints/`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Route, Router

from mosaicsync.contract import API_PREFIX, API_ROUTES, PATH_PARAMETERS
from mosaicsync.local.endpoints import (
    auth,
    control,
    database,
    files,
    projects,
    sites,
    storage,
    tickets,
)
from mosaicsync.local.errors import ApiError
from mosaicsync.local.origin import HostCheck
from mosaicsync.local.platform import Platform
from mosaicsync.local.reload import PATH as RELOAD_PATH
from mosaicsync.local.reload import ReloadHub

Endpoint = Callable[[Request], Awaitable[Response]]

# The endpoint of each contract route. Literal paths come before templated ones: `/projects`
# must win over `/{project_id}`.
API_ENDPOINTS: dict[str, Endpoint] = {
    "list_projects": projects.list_projects,
    "create_project": projects.create_project,
    "create_ticket": tickets.create_ticket,
    "get_project": projects.get_project,
    "delete_project": projects.delete_project,
    "database": database.database,
    "sql": database.sql,
    "upload_file": files.upload_file,
    "list_files": files.list_files,
    "delete_file": files.delete_file,
    "upload_url": storage.upload_url,
    "list_storage": storage.list_storage,
    "delete_object": storage.delete_object,
    "magic_link": auth.magic_link,
}


def starlette_path(template: str) -> str:
    """A contract path template as a starlette route path: path parameters may hold "/"."""
    return re.sub(
        r"\{(\w+)\}",
        lambda m: f"{{{m[1]}:path}}" if m[1] in PATH_PARAMETERS else m[0],
        template,
    )


def api_routes() -> list[Route]:
    """The Mosaic API, one route per entry of `contract.API_ROUTES`."""
    return [
        Route(
            API_PREFIX + starlette_path(API_ROUTES[name].path),
            endpoint,
            methods=[API_ROUTES[name].method],
        )
        for name, endpoint in API_ENDPOINTS.items()
    ]


def routes(reload: ReloadHub | None) -> list[BaseRoute]:
    """Every route: sites by host, the API, storage, magic links, sites by path, `/_local/`."""
    by_host = Route("/{path:path}", sites.site_by_host, methods=["GET", "HEAD"])
    site_routes = Router(routes=[by_host])
    dev_routes = []
    if reload is not None:
        # Also on each site's own host, so the page's script stays same-origin. No site file can
        # shadow it: a name without an allowed extension is never stored.
        reload_route = Route(RELOAD_PATH, reload.endpoint, methods=["GET"])
        site_routes.routes.insert(0, reload_route)
        dev_routes.append(reload_route)
    stored = "/_storage/{project_id}/{filename:path}"
    return [
        Host("{project_id}.localhost", app=site_routes),
        *api_routes(),
        Route(stored, storage.put_object, methods=["PUT"]),
        Route(stored, storage.get_object, methods=["GET", "HEAD"]),
        Route(stored, storage.storage_preflight, methods=["OPTIONS"]),
        Route("/auth/verify", auth.verify_link, methods=["GET"]),
        Route("/sites/{project_id}", sites.site_root_redirect, methods=["GET", "HEAD"]),
        Route("/sites/{project_id}/{path:path}", sites.site_by_path, methods=["GET", "HEAD"]),
        Route("/_local/", control.local_page, methods=["GET"]),
        Route("/_local/info", control.info, methods=["GET"]),
        Route("/_local/health", control.health, methods=["GET"]),
        Route("/_local/outbox", control.outbox_json, methods=["GET"]),
        Route("/_local/outbox", control.outbox_clear, methods=["DELETE"]),
        Route("/_local/tickets", control.tickets_json, methods=["GET"]),
        Route("/_local/clock", control.clock, methods=["POST"]),
        *dev_routes,
    ]


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 in the API's error shape, saying where to look."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}; see /_local/info"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(
        {"success": False, "error": message}, status_code=exc.status_code, headers=exc.headers
    )


def build_app(platform: Platform) -> Starlette:
    """The ASGI app of one platform; endpoints reach it as `request.app.state.platform`."""
    app = Starlette(
        routes=routes(platform.reload),
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
        middleware=[Middleware(HostCheck, configured=platform.settings.host)],
    )
    app.state.platform = platform
    return app
