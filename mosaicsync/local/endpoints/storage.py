"""Object storage: upload URLs, listing and deleting through the API; the signed PUT and GET."""

from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from mosaicsync.local.endpoints.common import CORS, account, platform_of, read_json, request_base
from mosaicsync.local.errors import ApiError
from mosaicsync.local.origin import STORAGE_HEADERS, inline_ok, storage_media_type


def object_url(base: str, project_id: str, path: str) -> str:
    return f"{base}/_storage/{project_id}/{quote(path)}"


async def upload_url(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    signed = await run_in_threadpool(
        p.objects.presign,
        project.id,
        body.get("filename"),
        body.get("size"),
        request_base(request),
    )
    return JSONResponse(signed)


async def list_storage(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    base = request_base(request)
    files = [
        {"filename": o.path, "size": o.size, "url": object_url(base, project.id, o.path)}
        for o in p.objects.list(project.id)
    ]
    return JSONResponse({"files": files, "usage": p.objects.usage(project.id)})


async def delete_object(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    project = p.projects.get(account_id, request.path_params["project_id"])
    await run_in_threadpool(p.objects.delete, project.id, request.path_params["filename"])
    p.changed(project.id, request.path_params["filename"])
    return JSONResponse({"success": True})


async def put_object(request: Request) -> Response:
    """The presigned upload: no API key, the URL's signature is the permission."""
    p = platform_of(request)
    project_id = request.path_params["project_id"]
    path = request.path_params["filename"]
    if p.projects.public(project_id) is None:
        raise ApiError(403, "signature does not match: unknown project", headers=CORS)
    try:
        size = p.objects.verify(project_id, path, dict(request.query_params))
        stored = await p.objects.receive(
            project_id, path, size, request.headers.get("content-length"), request.stream()
        )
    except ApiError as exc:
        exc.headers = {**exc.headers, **CORS}
        raise
    p.changed(project_id, stored.path)
    return JSONResponse(
        {"filename": stored.path, "size": stored.size, "sha256": stored.sha256},
        headers={"ETag": f'"{stored.sha256}"', **CORS},
    )


async def get_object(request: Request) -> Response:
    p = platform_of(request)
    found = p.objects.lookup(request.path_params["project_id"], request.path_params["filename"])
    if found is None:
        return JSONResponse(
            {"success": False, "error": "object not found"}, status_code=404, headers=CORS
        )
    obj, path = found
    etag = f'"{obj.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=0, must-revalidate",
        **CORS,
        **STORAGE_HEADERS,
    }
    inm = request.headers.get("if-none-match")
    if inm and inm.strip().removeprefix("W/") == etag:
        return Response(status_code=304, headers=headers)
    # Only media is shown inline: an uploaded page or SVG would otherwise run as the platform's
    # own origin, next to `/_local/`.
    media_type = storage_media_type(obj.path)
    if inline_ok(media_type):
        return FileResponse(path, headers=headers, media_type=media_type)
    name = obj.path.rsplit("/", 1)[-1]
    return FileResponse(path, headers=headers, media_type=media_type, filename=name)


async def storage_preflight(request: Request) -> Response:
    return Response(status_code=204, headers={**CORS, "Access-Control-Max-Age": "600"})
