"""A project's database: its connection details, and the SQL endpoint."""

from __future__ import annotations

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mosaicsync.local.accounts import connections_busy
from mosaicsync.local.endpoints.common import account, platform_of, read_json
from mosaicsync.local.errors import ApiError
from mosaicsync.local.pg.pool import AccountConnectionsError
from mosaicsync.local.pg.sqlexec import SqlError


async def database(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.running(account_id, request.path_params["project_id"])
    creds = p.projects.credentials(project)
    return JSONResponse(
        {
            "project_id": project.id,
            "database_url": creds.url,
            "host": creds.host,
            "port": creds.port,
            "database": creds.database,
            "user": creds.user,
            "password": creds.password,
        }
    )


async def sql(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    query = body.get("query")
    if not isinstance(query, str):
        raise ApiError(400, '"query" must be a string of SQL, e.g. {"query": "SELECT 1"}')
    project = p.projects.running(account_id, request.path_params["project_id"])
    creds = p.projects.credentials(project)
    try:
        # One account's queries wait here for one of its own slots (429 past the wait), never
        # for another account's connections or worker threads.
        async with p.sql_slots.hold(account_id):
            rows = await run_in_threadpool(p.databases.execute, creds, query, account_id)
    except SqlError as exc:
        extra = {"code": exc.code, "position": exc.position}
        if exc.detail:
            extra["detail"] = exc.detail
        if exc.hint:
            extra["hint"] = exc.hint
        raise ApiError(400, exc.message, **extra) from None
    except AccountConnectionsError:
        raise connections_busy(p.settings.connections_per_account, 0) from None
    except psycopg.Error as exc:
        raise ApiError(
            503,
            f"database of project {project.id} is unavailable ({type(exc).__name__}); "
            "retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    return JSONResponse({"success": True, "data": rows})
