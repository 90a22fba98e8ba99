"""Serving the static sites: on `{project_id}.localhost` and under `/sites/{project_id}/`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mosaicsync.local import pages
from mosaicsync.local.endpoints.common import platform_of, request_base
from mosaicsync.local.origin import SITE_SANDBOX
from mosaicsync.local.reload import inject_script
from mosaicsync.local.sites import SiteResponse


def serve_site(request: Request, project_id: str, path: str, base: str) -> Response:
    p = platform_of(request)
    if p.projects.public(project_id) is None:
        return HTMLResponse(
            pages.message_page("No such site", f"There is no project {project_id!r} here."),
            status_code=404,
        )
    version = p.reload.version(project_id) if p.reload is not None else 0
    result = p.sites.serve(project_id, path, request.headers.get("if-none-match"), base)
    headers = dict(result.headers)
    if p.reload is not None and headers.get("Content-Type", "").startswith("text/html"):
        if result.status == 304:  # cached before dev mode, without the script
            result = p.sites.serve(project_id, path, None, base)
            headers = dict(result.headers)
        injected = inject_script(result.body, project_id, version)
        result = SiteResponse(result.status, injected, headers)
        # The bytes differ from the stored file's: no ETag, and never from a cache.
        headers.pop("ETag", None)
        headers["Cache-Control"] = "no-store"
    body = b"" if request.method == "HEAD" else result.body
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(result.body))
    return Response(body, status_code=result.status, headers=headers)


def site_by_host(request: Request) -> Response:
    project_id = request.path_params["project_id"]
    return serve_site(request, project_id, request.url.path, request_base(request))


def site_by_path(request: Request) -> Response:
    project_id = request.path_params["project_id"]
    base = f"{request_base(request)}/sites/{project_id}"
    response = serve_site(request, project_id, "/" + request.path_params["path"], base)
    # Same host as `/_local/`: the page runs in an opaque origin, so its scripts cannot read it.
    response.headers["Content-Security-Policy"] = SITE_SANDBOX
    return response


async def site_root_redirect(request: Request) -> Response:
    return RedirectResponse(f"/sites/{request.path_params['project_id']}/", status_code=301)
