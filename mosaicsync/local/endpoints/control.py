"""`/_local/`: what only the local platform has (its info, the outbox, tickets, the clock)."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from mosaicsync.local import pages
from mosaicsync.local.endpoints.common import account, platform_of, read_json
from mosaicsync.local.endpoints.tickets import ticket_rows
from mosaicsync.local.errors import ApiError


async def info(request: Request) -> Response:
    return JSONResponse(platform_of(request).info)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _token_ok(request: Request) -> bool:
    given = request.query_params.get("token") or request.headers.get("x-local-token") or ""
    expected = platform_of(request).operator_token
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


async def viewer(request: Request) -> int | None:
    """Whose mail and tickets `/_local/` may show: None for the operator (the start token), else
    the account of the API key. Tenant pages share this host, so nothing is shown without one."""
    if _token_ok(request):
        return None
    if request.headers.get("x-api-key"):
        return await account(request)
    raise ApiError(
        401,
        "the outbox and tickets need credentials: send X-API-Key: <your key> (shows that "
        "account's mail and tickets), or open the Outbox link printed when the platform "
        "started (/_local/?token=...), which shows everything",
    )


def _project_ids(request: Request, account_id: int) -> set[str]:
    return {project.id for project in platform_of(request).projects.list(account_id)}


def _emails(request: Request, account_id: int | None, **filters: str | None) -> list[dict]:
    emails = platform_of(request).outbox.emails(**filters)
    if account_id is None:
        return emails
    mine = _project_ids(request, account_id)
    return [m for m in emails if m["project_id"] in mine]


async def outbox_json(request: Request) -> Response:
    account_id = await viewer(request)
    q = request.query_params
    emails = _emails(request, account_id, email=q.get("email"), project_id=q.get("project_id"))
    return JSONResponse({"emails": emails})


async def outbox_clear(request: Request) -> Response:
    account_id = await viewer(request)
    p = platform_of(request)
    only = None if account_id is None else _project_ids(request, account_id)
    return JSONResponse({"deleted": p.outbox.clear(only)})


async def tickets_json(request: Request) -> Response:
    account_id = await viewer(request)
    return JSONResponse({"tickets": ticket_rows(platform_of(request), account_id)})


async def local_page(request: Request) -> Response:
    account_id = await viewer(request)
    p = platform_of(request)
    token = p.operator_token if account_id is None else None
    return HTMLResponse(
        pages.outbox_page(_emails(request, account_id), ticket_rows(p, account_id), p.info, token),
        # The page carries the token in its links: never to another site.
        headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"},
    )


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
