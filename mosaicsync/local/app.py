"""The HTTP surface of the local platform: the Mosaic API, sites, storage, and `/_local/`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Host, Route, Router

from mosaicsync.local import pages
from mosaicsync.local.accounts import Accounts, RateLimiter
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.outbox import LinkError, Outbox
from mosaicsync.local.pg.databases import Databases
from mosaicsync.local.pg.sqlexec import SqlError
from mosaicsync.local.projects import Project, Projects
from mosaicsync.local.reload import PATH as RELOAD_PATH
from mosaicsync.local.reload import ReloadHub, inject_script
from mosaicsync.local.settings import LocalSettings
from mosaicsync.local.sites import SiteResponse, SiteStore
from mosaicsync.local.state import State, hash_secret
from mosaicsync.local.storage import ObjectStore

API = "/v1/project"
INLINE_PUT = 64 * 1024  # site files up to this many characters are stored on the event loop
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Expose-Headers": "ETag, Content-Length",
}


@dataclass
class Platform:
    """Everything a request handler needs; built and owned by `server.LocalPlatform`."""

    settings: LocalSettings
    state: State
    clock: Clock
    accounts: Accounts
    limiter: RateLimiter
    projects: Projects
    sites: SiteStore
    objects: ObjectStore
    outbox: Outbox
    databases: Databases
    port: int
    info: dict[str, Any] = field(default_factory=dict)
    reload: ReloadHub | None = None  # dev mode only

    def changed(self, project_id: str, path: str) -> None:
        """Tell the pages of the project that a file changed (dev mode; call on the loop)."""
        if self.reload is not None:
            self.reload.changed(project_id, path)

    def site_url(self, project_id: str) -> str:
        return f"http://{project_id}.localhost:{self.port}"

    def project_json(self, project: Project) -> dict[str, Any]:
        return {
            "project_id": project.id,
            "name": project.name,
            "status": project.status,
            "url": self.site_url(project.id),
        }


def request_base(request: Request) -> str:
    """The scheme and host the client used, so URLs we hand out go back the same way."""
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object body, or 413 past `limit` bytes, or 400 saying what is wrong."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, over the {limit}-byte limit")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be read as JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def build_app(platform: Platform) -> Starlette:
    p = platform
    max_body = p.settings.max_body

    async def account(request: Request) -> int:
        key = request.headers.get("x-api-key")
        account_id = p.accounts.authenticate(key)
        p.limiter.check(hash_secret(key or ""))
        return account_id

    # -- projects ---------------------------------------------------------------------------

    async def list_projects(request: Request) -> Response:
        account_id = await account(request)
        return JSONResponse({"projects": [p.project_json(x) for x in p.projects.list(account_id)]})

    async def create_project(request: Request) -> Response:
        account_id = await account(request)
        body = await read_json(request, max_body)
        project = await run_in_threadpool(p.projects.create, account_id, body.get("name"))
        return JSONResponse(p.project_json(project))

    async def get_project(request: Request) -> Response:
        account_id = await account(request)
        project = p.projects.get(account_id, request.path_params["project_id"])
        return JSONResponse(p.project_json(project))

    async def delete_project(request: Request) -> Response:
        account_id = await account(request)
        project_id = request.path_params["project_id"]
        await run_in_threadpool(p.projects.delete, account_id, project_id)
        p.sites.delete_all(project_id)
        p.objects.delete_all(project_id)
        return JSONResponse({"success": True})

    # -- database ---------------------------------------------------------------------------

    async def database(request: Request) -> Response:
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
        account_id = await account(request)
        body = await read_json(request, max_body)
        query = body.get("query")
        if not isinstance(query, str):
            raise ApiError(400, '"query" must be a string of SQL, e.g. {"query": "SELECT 1"}')
        project = p.projects.running(account_id, request.path_params["project_id"])
        creds = p.projects.credentials(project)
        try:
            rows = await run_in_threadpool(p.databases.execute, creds, query)
        except SqlError as exc:
            extra = {"code": exc.code, "position": exc.position}
            if exc.detail:
                extra["detail"] = exc.detail
            if exc.hint:
                extra["hint"] = exc.hint
            raise ApiError(400, exc.message, **extra) from None
        except psycopg.Error as exc:
            raise ApiError(
                503,
                f"database of project {project.id} is unavailable ({type(exc).__name__}); "
                "retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        return JSONResponse({"success": True, "data": rows})

    # -- site files -------------------------------------------------------------------------

    async def put_file(request: Request) -> Response:
        account_id = await account(request)
        body = await read_json(request, max_body)
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
        account_id = await account(request)
        project = p.projects.get(account_id, request.path_params["project_id"])
        await run_in_threadpool(p.sites.delete, project.id, request.path_params["filename"])
        p.changed(project.id, request.path_params["filename"])
        return JSONResponse({"success": True})

    # -- storage ----------------------------------------------------------------------------

    def object_url(base: str, project_id: str, path: str) -> str:
        return f"{base}/_storage/{project_id}/{quote(path)}"

    async def upload_url(request: Request) -> Response:
        account_id = await account(request)
        body = await read_json(request, max_body)
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
        account_id = await account(request)
        project = p.projects.get(account_id, request.path_params["project_id"])
        base = request_base(request)
        files = [
            {"filename": o.path, "size": o.size, "url": object_url(base, project.id, o.path)}
            for o in p.objects.list(project.id)
        ]
        return JSONResponse({"files": files, "usage": p.objects.usage(project.id)})

    async def delete_object(request: Request) -> Response:
        account_id = await account(request)
        project = p.projects.get(account_id, request.path_params["project_id"])
        await run_in_threadpool(p.objects.delete, project.id, request.path_params["filename"])
        p.changed(project.id, request.path_params["filename"])
        return JSONResponse({"success": True})

    async def put_object(request: Request) -> Response:
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
        found = p.objects.lookup(request.path_params["project_id"], request.path_params["filename"])
        if found is None:
            return JSONResponse(
                {"success": False, "error": "object not found"}, status_code=404, headers=CORS
            )
        obj, path = found
        etag = f'"{obj.sha256}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=0, must-revalidate", **CORS}
        inm = request.headers.get("if-none-match")
        if inm and inm.strip().removeprefix("W/") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, headers=headers)

    async def storage_preflight(request: Request) -> Response:
        return Response(status_code=204, headers={**CORS, "Access-Control-Max-Age": "600"})

    # -- magic links and tickets ------------------------------------------------------------

    async def magic_link(request: Request) -> Response:
        account_id = await account(request)
        body = await read_json(request, max_body)
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
        projects = {r["id"]: p.site_url(r["id"]) for r in p.state.all("SELECT id FROM projects")}
        try:
            redirect = p.outbox.verify(request.query_params.get("token"), projects)
        except LinkError as exc:
            return HTMLResponse(pages.message_page(exc.title, exc.message), status_code=exc.status)
        return RedirectResponse(redirect.location, status_code=303)

    async def create_ticket(request: Request) -> Response:
        account_id = await account(request)
        body = await read_json(request, max_body)
        subject, message = body.get("subject"), body.get("message")
        if not isinstance(subject, str) or not subject.strip():
            raise ApiError(400, '"subject" must be a non-empty string')
        if not isinstance(message, str) or not message.strip():
            raise ApiError(400, '"message" must be a non-empty string')
        project_id = body.get("project_id")
        if project_id is not None:
            if not isinstance(project_id, str):
                raise ApiError(400, '"project_id" must be a string when given')
            p.projects.get(account_id, project_id)
        cur = p.state.run(
            "INSERT INTO tickets (account_id, project_id, subject, message, status, created_at) "
            "VALUES (?, ?, ?, ?, 'open', ?)",
            account_id,
            project_id,
            subject,
            message,
            p.clock.now(),
        )
        return JSONResponse(
            {
                "ticket_id": cur.lastrowid,
                "status": "open",
                "message": "Ticket submitted successfully.",
            }
        )

    # -- sites --------------------------------------------------------------------------------

    def serve_site(request: Request, project_id: str, path: str, base: str) -> Response:
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
            result = SiteResponse(
                result.status, inject_script(result.body, project_id, version), headers
            )
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
        return serve_site(request, project_id, "/" + request.path_params["path"], base)

    async def site_root_redirect(request: Request) -> Response:
        return RedirectResponse(f"/sites/{request.path_params['project_id']}/", status_code=301)

    # -- /_local/ -------------------------------------------------------------------------------

    async def info(request: Request) -> Response:
        return JSONResponse(p.info)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def outbox_json(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(
            {"emails": p.outbox.emails(email=q.get("email"), project_id=q.get("project_id"))}
        )

    async def outbox_clear(request: Request) -> Response:
        return JSONResponse({"deleted": p.outbox.clear()})

    def ticket_rows() -> list[dict[str, Any]]:
        rows = p.state.all("SELECT * FROM tickets ORDER BY id DESC")
        return [
            {
                "ticket_id": r["id"],
                "project_id": r["project_id"],
                "subject": r["subject"],
                "message": r["message"],
                "status": r["status"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    async def tickets_json(request: Request) -> Response:
        return JSONResponse({"tickets": ticket_rows()})

    async def local_page(request: Request) -> Response:
        return HTMLResponse(pages.outbox_page(p.outbox.emails(), ticket_rows(), p.info))

    async def clock(request: Request) -> Response:
        if not p.settings.allow_clock_override:
            raise ApiError(404, "clock override is off: start with --allow-clock-override")
        body = await read_json(request, max_body)
        if body.get("reset"):
            now = p.clock.reset()
        else:
            advance = body.get("advance")
            if isinstance(advance, bool) or not isinstance(advance, int | float):
                raise ApiError(400, 'send {"advance": seconds} or {"reset": true}')
            now = p.clock.advance(float(advance))
        return JSONResponse({"now": now})

    site_routes = Router(routes=[Route("/{path:path}", site_by_host, methods=["GET", "HEAD"])])
    dev_routes = []
    if p.reload is not None:
        # Also on each site's own host, so the page's script stays same-origin. No site file can
        # shadow it: a name without an allowed extension is never stored.
        reload_route = Route(RELOAD_PATH, p.reload.endpoint, methods=["GET"])
        site_routes.routes.insert(0, reload_route)
        dev_routes.append(reload_route)
    routes = [
        Host("{project_id}.localhost", app=site_routes),
        Route(f"{API}/projects", list_projects, methods=["GET"]),
        Route(f"{API}/projects", create_project, methods=["POST"]),
        Route(f"{API}/tickets", create_ticket, methods=["POST"]),
        Route(f"{API}/{{project_id}}", get_project, methods=["GET"]),
        Route(f"{API}/{{project_id}}", delete_project, methods=["DELETE"]),
        Route(f"{API}/{{project_id}}/database", database, methods=["GET"]),
        Route(f"{API}/{{project_id}}/sql", sql, methods=["POST"]),
        Route(f"{API}/{{project_id}}/files", put_file, methods=["POST"]),
        Route(f"{API}/{{project_id}}/files", list_files, methods=["GET"]),
        Route(f"{API}/{{project_id}}/files/{{filename:path}}", delete_file, methods=["DELETE"]),
        Route(f"{API}/{{project_id}}/storage/upload-url", upload_url, methods=["POST"]),
        Route(f"{API}/{{project_id}}/storage", list_storage, methods=["GET"]),
        Route(f"{API}/{{project_id}}/storage/{{filename:path}}", delete_object, methods=["DELETE"]),
        Route(f"{API}/{{project_id}}/auth/magic-link", magic_link, methods=["POST"]),
        Route("/_storage/{project_id}/{filename:path}", put_object, methods=["PUT"]),
        Route("/_storage/{project_id}/{filename:path}", get_object, methods=["GET", "HEAD"]),
        Route("/_storage/{project_id}/{filename:path}", storage_preflight, methods=["OPTIONS"]),
        Route("/auth/verify", verify_link, methods=["GET"]),
        Route("/sites/{project_id}", site_root_redirect, methods=["GET", "HEAD"]),
        Route("/sites/{project_id}/{path:path}", site_by_path, methods=["GET", "HEAD"]),
        Route("/_local/", local_page, methods=["GET"]),
        Route("/_local/info", info, methods=["GET"]),
        Route("/_local/health", health, methods=["GET"]),
        Route("/_local/outbox", outbox_json, methods=["GET"]),
        Route("/_local/outbox", outbox_clear, methods=["DELETE"]),
        Route("/_local/tickets", tickets_json, methods=["GET"]),
        Route("/_local/clock", clock, methods=["POST"]),
        *dev_routes,
    ]

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
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

    return Starlette(
        routes=routes,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
    )
