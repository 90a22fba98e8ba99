"""`/_local/`: what only the local platform has (its info, the outbox, tickets, the clock)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from mosaicsync.local import pages
from mosaicsync.local.endpoints.common import platform_of, read_json
from mosaicsync.local.endpoints.tickets import ticket_rows
from mosaicsync.local.errors import ApiError


async def info(request: Request) -> Response:
    return JSONResponse(platform_of(request).info)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def outbox_json(request: Request) -> Response:
    p = platform_of(request)
    q = request.query_params
    return JSONResponse(
        {"emails": p.outbox.emails(email=q.get("email"), project_id=q.get("project_id"))}
    )


async def outbox_clear(request: Request) -> Response:
    return JSONResponse({"deleted": platform_of(request).outbox.clear()})


async def tickets_json(request: Request) -> Response:
    return JSONResponse({"tickets": ticket_rows(platform_of(request))})


async def local_page(request: Request) -> Response:
    p = platform_of(request)
    return HTMLResponse(pages.outbox_page(p.outbox.emails(), ticket_rows(p), p.info))


async def clock(request: Request) -> Response:
    p = platform_of(request)
    if not p.settings.allow_clock_override:
        raise ApiError(404, "clock override is off: start with --allow-clock-override")
    body = await read_json(request)
    if body.get("reset"):
        now = p.clock.reset()
    else:
        advance = body.get("advance")
        if isinstance(advance, bool) or not isinstance(advance, int | float):
            raise ApiError(400, 'send {"advance": seconds} or {"reset": true}')
        now = p.clock.advance(float(advance))
    return JSONResponse({"now": now})
