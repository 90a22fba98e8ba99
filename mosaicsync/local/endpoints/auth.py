"""Magic links: sending one (to the outbox) and following one."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mosaicsync.local import pages
from mosaicsync.local.endpoints.common import account, platform_of, read_json, request_base
from mosaicsync.local.outbox import LinkError


async def magic_link(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    result = await run_in_threadpool(
        p.outbox.send_magic_link,
        project.id,
        project.name,
        body.get("email"),
        body.get("redirect_url"),
        request_base(request),
    )
    return JSONResponse(result)


async def verify_link(request: Request) -> Response:
    p = platform_of(request)
    projects = {r["id"]: p.site_url(r["id"]) for r in p.state.all("SELECT id FROM projects")}
    try:
        redirect = p.outbox.verify(request.query_params.get("token"), projects)
    except LinkError as exc:
        return HTMLResponse(pages.message_page(exc.title, exc.message), status_code=exc.status)
    return RedirectResponse(redirect.location, status_code=303)
