"""Site files through the API: upload, list, delete."""

from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mosaicsync.local.endpoints.common import account, platform_of, read_json

INLINE_PUT = 64 * 1024  # site files up to this many characters are stored on the event loop


async def upload_file(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    content = body.get("content")
    args = (project.id, body.get("filename"), content, body.get("encoding"))
    if isinstance(content, str) and len(content) <= INLINE_PUT:
        # A thread hand-off costs more than writing a small file (profiled); big ones
        # still go to a thread so the loop keeps serving.
        stored = p.sites.put(*args)
    else:
        stored = await run_in_threadpool(p.sites.put, *args)
    p.changed(project.id, stored.path)
    return JSONResponse(
        {
            "filename": stored.path,
            "url": f"{p.site_url(project.id)}/{quote(stored.path)}",
            "size": stored.size,
            "sha256": stored.sha256,
        }
    )


async def list_files(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    site = p.site_url(project.id)
    files = [
        {
            "filename": f.path,
            "size": f.size,
            "url": f"{site}/{quote(f.path)}",
            "sha256": f.sha256,
        }
        for f in p.sites.list(project.id)
    ]
    return JSONResponse({"files": files})


async def delete_file(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    await run_in_threadpool(p.sites.delete, project.id, request.path_params["filename"])
    p.changed(project.id, request.path_params["filename"])
    return JSONResponse({"success": True})
