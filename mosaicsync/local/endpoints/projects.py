"""Projects: list, create, get, delete."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mosaicsync.local.endpoints.common import account, platform_of, read_json


async def list_projects(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    return JSONResponse({"projects": [p.project_json(x) for x in p.projects.list(account_id)]})


async def create_project(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    project = await run_in_threadpool(p.projects.create, account_id, body.get("name"))
    return JSONResponse(p.project_json(project))


async def get_project(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    return JSONResponse(p.project_json(project))


async def delete_project(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project_id = request.path_params["project_id"]
    await run_in_threadpool(p.projects.delete, account_id, project_id)
    p.sites.delete_all(project_id)
    p.objects.delete_all(project_id)
    return JSONResponse({"success": True})
