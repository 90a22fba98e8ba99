"""The local platform over real HTTP, backed by real PostgreSQL: every route and error code."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import KEY_B, LocalServer

pytestmark = pytest.mark.integration


def wait_running(client: httpx.Client, project_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        project = client.get(f"/{project_id}").json()
        if project["status"] == "running":
            return project
        assert project["status"] == "provisioning", project
        time.sleep(0.02)
    raise AssertionError(f"{project_id} never became running")


@pytest.fixture(scope="module")
def project(local_server: LocalServer) -> dict:
    with local_server.client() as c:
        created = c.post("/projects", json={"name": "Todo App"}).json()
        return wait_running(c, created["project_id"])


@pytest.fixture
def api(local_server: LocalServer):
    with local_server.client() as c:
        yield c


def sql(api: httpx.Client, project_id: str, query: str) -> httpx.Response:
    return api.post(f"/{project_id}/sql", json={"query": query})


def site_get(server: LocalServer, project_id: str, path: str = "/", **headers: str):
    """GET through the {id}.localhost name; Python cannot resolve it, so send the Host header."""
    host = f"{project_id}.localhost:{server.port}"
    return httpx.get(f"{server.base_url}{path}", headers={"Host": host, **headers})


# -- keys and accounts ---------------------------------------------------------------------


def test_projects_needs_a_key(local_server: LocalServer) -> None:
    with local_server.client(key=None) as anon:
        r = anon.get("/projects")
    assert r.status_code == 401
    assert "X-API-Key" in r.json()["error"]
    with local_server.client(key="mk_wrong_key") as wrong:
        r = wrong.get("/projects")
    assert r.status_code == 401
    assert "rotate" in r.json()["error"]
    with local_server.client() as ok:
        assert ok.get("/projects").status_code == 200


def test_create_project_shape_and_provisioning(api: httpx.Client, local_server: LocalServer):
    r = api.post("/projects", json={"name": "My New App"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"project_id", "name", "url", "status"}
    assert body["status"] in ("provisioning", "running")
    assert body["name"] == "My New App"
    pid = body["project_id"]
    assert __import__("re").fullmatch(r"[a-z]+-[a-z0-9]{3}", pid)
    assert body["url"] == f"http://{pid}.localhost:{local_server.port}"
    wait_running(api, pid)
    listed = api.get("/projects").json()["projects"]
    assert any(p["project_id"] == pid and p["status"] == "running" for p in listed)


def test_create_project_bad_input(api: httpx.Client) -> None:
    assert api.post("/projects", json={}).status_code == 400
    assert api.post("/projects", json={"name": ""}).status_code == 400
    r = api.post("/projects", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]
    assert api.post("/projects", json=["a"]).status_code == 400


def test_accounts_are_isolated(local_server: LocalServer, project: dict) -> None:
    pid = project["project_id"]
    with local_server.client(KEY_B) as other:
        assert pid not in [p["project_id"] for p in other.get("/projects").json()["projects"]]
        for method, path, body in [
            ("GET", f"/{pid}", None),
            ("GET", f"/{pid}/database", None),
            ("POST", f"/{pid}/sql", {"query": "select 1"}),
            ("POST", f"/{pid}/files", {"filename": "x.html", "content": "x"}),
            ("GET", f"/{pid}/files", None),
            ("DELETE", f"/{pid}/files/index.html", None),
            ("POST", f"/{pid}/storage/upload-url", {"filename": "a.bin", "size": 1}),
            ("GET", f"/{pid}/storage", None),
            ("DELETE", f"/{pid}/storage/a.bin", None),
            ("POST", f"/{pid}/auth/magic-link", {"email": "a@example.com"}),
            ("POST", "/tickets", {"subject": "s", "message": "m", "project_id": pid}),
            ("DELETE", f"/{pid}", None),
        ]:
            r = other.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code)
            # The same answer as for an id that exists nowhere: nothing leaks.
            assert r.json()["error"].startswith("project")


def test_unknown_project_and_route(api: httpx.Client) -> None:
    assert api.get("/nope-zzz").status_code == 404
    r = api.get("/nope-zzz/whatever/else")
    assert r.status_code == 404
    assert r.json()["success"] is False


# -- database and SQL ----------------------------------------------------------------------


def test_sql_ddl_dml_and_types(api: httpx.Client, project: dict) -> None:
    pid = project["project_id"]
    r = sql(
        api,
        pid,
        "CREATE TABLE todos (id SERIAL PRIMARY KEY, task TEXT, done BOOLEAN "
        "DEFAULT false, price NUMERIC(10,2), at TIMESTAMPTZ, tags TEXT[], meta JSONB, "
        "u UUID, big BIGINT)",
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "data": [{"result": "CREATE TABLE"}]}
    r = sql(
        api,
        pid,
        "INSERT INTO todos (task, price, at, tags, meta, u, big) VALUES "
        "('write tests', 12.50, '2026-01-02 03:04:05+00', ARRAY['a','b'], "
        "'{\"k\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 9007199254740993)",
    )
    assert r.json()["data"] == [{"result": "INSERT 0 1"}]
    row = sql(api, pid, "SELECT * FROM todos").json()["data"][0]
    assert row["id"] == 1 and row["task"] == "write tests" and row["done"] is False
    assert row["price"] == "12.50"
    assert row["at"].startswith("2026-01-02") and "03:04:05" in row["at"]
    assert row["tags"] == ["a", "b"]
    assert row["meta"] == {"k": [1, 2]}
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["big"] == "9007199254740993"


def test_sql_multi_statement_is_one_transaction(api: httpx.Client, project: dict) -> None:
    pid = project["project_id"]
    r = sql(api, pid, "CREATE TABLE m (x int); INSERT INTO m VALUES (1), (2); SELECT x FROM m")
    assert r.json()["data"] == [{"x": 1}, {"x": 2}]
    r = sql(api, pid, "INSERT INTO m VALUES (3); SELECT 1/0")
    assert r.status_code == 400
    assert r.json()["code"] == "22012"
    assert sql(api, pid, "SELECT count(*) AS n FROM m").json()["data"] == [{"n": 2}]


def test_sql_error_shape(api: httpx.Client, project: dict) -> None:
    r = sql(api, project["project_id"], "select 1;\nselect * fromm t")
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False
    assert body["code"] == "42601"
    assert body["position"] == 20
    assert "syntax error" in body["error"]
    r = api.post(f"/{project['project_id']}/sql", json={"query": 5})
    assert r.status_code == 400


def test_sql_extensions_preinstalled(api: httpx.Client, project: dict) -> None:
    pid = project["project_id"]
    r = sql(api, pid, "SELECT extname FROM pg_extension ORDER BY extname")
    names = {row["extname"] for row in r.json()["data"]}
    assert {"vector", "uuid-ossp", "pgcrypto"} <= names
    r = sql(api, pid, "SELECT '[1,2,3]'::vector AS v, uuid_generate_v4() IS NOT NULL AS ok")
    assert r.json()["data"] == [{"v": "[1,2,3]", "ok": True}]


def test_sql_timeout_stops_pg_sleep(api: httpx.Client, project: dict) -> None:
    # The server runs with --statement-timeout 2; the tenant lifting its own timeout must not help.
    started = time.monotonic()
    r = sql(api, project["project_id"], "SET statement_timeout = 0; SELECT pg_sleep(10)")
    elapsed = time.monotonic() - started
    assert r.status_code == 400
    assert r.json()["code"] == "57014"
    assert elapsed < 6


def test_sql_row_cap(api: httpx.Client, project: dict) -> None:
    r = sql(api, project["project_id"], "SELECT g FROM generate_series(1, 5000) g")
    assert r.status_code == 400
    assert "1000" in r.json()["error"]


def test_sql_isolation_between_projects(api: httpx.Client, project: dict) -> None:
    other = api.post("/projects", json={"name": "Other"}).json()["project_id"]
    wait_running(api, other)
    mine = api.get(f"/{project['project_id']}/database").json()
    theirs = api.get(f"/{other}/database").json()
    # Through the endpoint: no superuser powers.
    for query in [
        "SELECT * FROM pg_authid",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "RESET ROLE; SELECT * FROM pg_authid",
        f"SET ROLE {theirs['user']}",
    ]:
        r = sql(api, project["project_id"], query)
        assert r.status_code == 400, query
        assert r.json()["code"] == "42501", (query, r.json())
    # With the returned credentials: cannot reach the other project's database.
    url = mine["database_url"].rsplit("/", 1)[0] + "/" + theirs["database"]
    psql = shutil.which("psql")
    if psql:
        out = subprocess.run([psql, url, "-c", "select 1"], capture_output=True, text=True)
        assert out.returncode != 0
        assert "permission denied" in out.stderr or "no pg_hba.conf entry" in out.stderr


def test_database_credentials_work_with_psql(api: httpx.Client, project: dict) -> None:
    creds = api.get(f"/{project['project_id']}/database").json()
    assert set(creds) == {
        "project_id",
        "database_url",
        "host",
        "port",
        "database",
        "user",
        "password",
    }
    assert creds["database"] == "tenant_" + project["project_id"].replace("-", "_")
    assert creds["user"] == creds["database"]
    psql = shutil.which("psql")
    if not psql:
        pytest.skip("psql is not installed")
    out = subprocess.run(
        [psql, creds["database_url"], "-Atc", "select current_user"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == creds["user"]


# -- site files ----------------------------------------------------------------------------

PAGE = "<html><body>Hello!</body></html>"


def test_files_upload_serve_list_delete(
    api: httpx.Client, local_server: LocalServer, project: dict
) -> None:
    pid = project["project_id"]
    r = api.post(f"/{pid}/files", json={"filename": "index.html", "content": PAGE})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "index.html"
    assert r.json()["size"] == len(PAGE)
    assert r.json()["url"] == f"http://{pid}.localhost:{local_server.port}/index.html"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    r = api.post(
        f"/{pid}/files",
        json={
            "filename": "img/logo.png",
            "encoding": "base64",
            "content": base64.b64encode(png).decode(),
        },
    )
    assert r.json()["size"] == len(png)
    api.post(f"/{pid}/files", json={"filename": "docs/index.html", "content": "docs"})

    home = site_get(local_server, pid, "/")
    assert home.status_code == 200 and home.text == PAGE
    assert home.headers["content-type"].startswith("text/html")
    etag = home.headers["etag"]
    assert etag == '"' + hashlib.sha256(PAGE.encode()).hexdigest() + '"'
    assert "must-revalidate" in home.headers["cache-control"]
    assert site_get(local_server, pid, "/", **{"If-None-Match": etag}).status_code == 304
    assert site_get(local_server, pid, "/", **{"If-None-Match": "W/" + etag}).status_code == 304
    logo = site_get(local_server, pid, "/img/logo.png")
    assert logo.content == png and logo.headers["content-type"] == "image/png"
    assert site_get(local_server, pid, "/docs/").text == "docs"
    moved = site_get(local_server, pid, "/docs")
    assert moved.status_code == 301 and moved.headers["location"].endswith("/docs/")
    missing = site_get(local_server, pid, "/nope.html")
    assert missing.status_code == 404 and "404" in missing.text
    by_path = httpx.get(f"{local_server.base_url}/sites/{pid}/img/logo.png")
    assert by_path.content == png
    head = httpx.head(f"{local_server.base_url}/sites/{pid}/index.html")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(PAGE)

    listed = api.get(f"/{pid}/files").json()["files"]
    assert {f["filename"] for f in listed} >= {"index.html", "img/logo.png", "docs/index.html"}
    assert all(set(f) == {"filename", "size", "url", "sha256"} for f in listed)

    assert api.delete(f"/{pid}/files/img/logo.png").json() == {"success": True}
    assert site_get(local_server, pid, "/img/logo.png").status_code == 404
    assert api.delete(f"/{pid}/files/img/logo.png").status_code == 404


def test_custom_404_page(api: httpx.Client, local_server: LocalServer, project: dict) -> None:
    pid = project["project_id"]
    api.post(f"/{pid}/files", json={"filename": "404.html", "content": "custom missing"})
    r = site_get(local_server, pid, "/gone")
    assert r.status_code == 404 and r.text == "custom missing"
    api.delete(f"/{pid}/files/404.html")


@pytest.mark.parametrize(
    "filename",
    [
        "../etc/passwd.html",
        "/abs.html",
        "a/../b.html",
        "a\\b.html",
        "nul\0.html",
        "a//b.html",
        "./a.html",
        "",
        "noext",
        "script.php",
        "app.exe",
    ],
)
def test_files_bad_names(api: httpx.Client, project: dict, filename: str) -> None:
    r = api.post(f"/{project['project_id']}/files", json={"filename": filename, "content": "x"})
    assert r.status_code == 400
    assert r.json()["error"]


def test_files_extension_error_names_allowed_list(api: httpx.Client, project: dict) -> None:
    r = api.post(f"/{project['project_id']}/files", json={"filename": "a.php", "content": "x"})
    assert ".html" in r.json()["error"] and ".webp" in r.json()["error"]


def test_files_bad_base64(api: httpx.Client, project: dict) -> None:
    r = api.post(
        f"/{project['project_id']}/files",
        json={"filename": "a.png", "content": "!!!", "encoding": "base64"},
    )
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_body_cap_is_413(api: httpx.Client, project: dict) -> None:
    # The server's cap is 16 MiB: a 17 MiB body is refused before it is read.
    big = "x" * (17 * 1024 * 1024)
    r = api.post(f"/{project['project_id']}/files", json={"filename": "big.txt", "content": big})
    assert r.status_code == 413


def test_file_size_cap_is_413(api: httpx.Client, project: dict) -> None:
    big = "x" * (10 * 1024 * 1024 + 1)
    r = api.post(f"/{project['project_id']}/files", json={"filename": "big.txt", "content": big})
    assert r.status_code == 413
    assert "storage" in r.json()["error"]


# -- storage -------------------------------------------------------------------------------


def presign(api: httpx.Client, pid: str, filename: str, size: int) -> str:
    r = api.post(f"/{pid}/storage/upload-url", json={"filename": filename, "size": size})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == filename and body["expires_in"] == 300
    return body["upload_url"]


def test_storage_presign_put_list_get_delete(api: httpx.Client, project: dict) -> None:
    pid = project["project_id"]
    data = b"photo bytes" * 1000
    url = presign(api, pid, "photos/photo.jpg", len(data))
    r = httpx.put(url, content=data)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    listing = api.get(f"/{pid}/storage").json()
    entry = next(f for f in listing["files"] if f["filename"] == "photos/photo.jpg")
    assert entry["size"] == len(data)
    assert set(listing["usage"]) >= {"used", "limit", "percent"}
    assert listing["usage"]["limit"] == "20 GB"
    got = httpx.get(entry["url"])
    assert got.content == data and got.headers["access-control-allow-origin"] == "*"
    pre = httpx.options(entry["url"])
    assert pre.status_code == 204 and "PUT" in pre.headers["access-control-allow-methods"]
    assert api.delete(f"/{pid}/storage/photos/photo.jpg").json() == {"success": True}
    assert httpx.get(entry["url"]).status_code == 404
    assert api.delete(f"/{pid}/storage/photos/photo.jpg").status_code == 404


def tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


def test_storage_refuses_tampered_wrong_size_and_expired(
    api: httpx.Client, project: dict, local_server: LocalServer
) -> None:
    pid = project["project_id"]
    data = b"0123456789"
    url = presign(api, pid, "t.bin", len(data))
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    # Another first character, whatever the random signature starts with (1 run in 64 the old
    # "A" + sig[1:] was the signature itself, and the PUT rightly succeeded).
    first = "B" if sig[0] == "A" else "A"
    cases = {
        "tampered signature": (tamper(url, sig=first + sig[1:]), data),
        "bigger size in url": (tamper(url, size="11"), data + b"x"),
        "other file name": (url.replace("/t.bin?", "/u.bin?"), data),
        "wrong body size": (url, data + b"extra"),
    }
    for name, (bad_url, body) in cases.items():
        r = httpx.put(bad_url, content=body)
        assert r.status_code == 403, (name, r.status_code, r.text)
    assert api.get(f"/{pid}/storage").json()["files"] == [] or all(
        f["filename"] not in ("t.bin", "u.bin") for f in api.get(f"/{pid}/storage").json()["files"]
    )
    with httpx.Client() as raw:
        r = raw.put(url, content=iter([data]))  # chunked: no Content-Length
    assert r.status_code == 411
    # Expiry: move the platform's clock past 300 s.
    httpx.post(local_server.base_url + "/_local/clock", json={"advance": 301})
    try:
        r = httpx.put(url, content=data)
        assert r.status_code == 403 and "expired" in r.json()["error"]
    finally:
        httpx.post(local_server.base_url + "/_local/clock", json={"reset": True})
    names = [f["filename"] for f in api.get(f"/{pid}/storage").json()["files"]]
    assert "t.bin" not in names and "u.bin" not in names
    assert httpx.put(url, content=data).status_code == 200


def test_storage_quota(local_server: LocalServer) -> None:
    # Quota is checked when the URL is asked for (the session server has the 20 GB default).
    with local_server.client() as api:
        pid = api.post("/projects", json={"name": "Quota"}).json()["project_id"]
        r = api.post(
            f"/{pid}/storage/upload-url", json={"filename": "huge.bin", "size": 21 * 1000**3}
        )
    assert r.status_code == 403
    assert "quota" in r.json()["error"] and "20 GB" in r.json()["error"]


# -- magic links, outbox, tickets ----------------------------------------------------------


def test_magic_link_flow(api: httpx.Client, project: dict, local_server: LocalServer) -> None:
    pid = project["project_id"]
    httpx.delete(local_server.base_url + "/_local/outbox", params=local_server.local_auth)
    r = api.post(
        f"/{pid}/auth/magic-link", json={"email": "user@example.com", "redirect_url": "/dashboard"}
    )
    assert r.json() == {"success": True, "message": "Magic link sent! Check your email."}
    emails = httpx.get(
        local_server.base_url + "/_local/outbox",
        params={"email": "user@example.com", **local_server.local_auth},
    ).json()["emails"]
    assert len(emails) == 1
    mail = emails[0]
    assert mail["subject"] == "Sign in to Todo App" and mail["project_id"] == pid
    first = httpx.get(mail["link"])
    assert first.status_code == 303
    location = first.headers["location"]
    assert location.startswith(f"http://{pid}.localhost:{local_server.port}/dashboard?")
    query = parse_qs(urlsplit(location).query)
    assert query["email"] == ["user@example.com"] and query["token"][0]
    second = httpx.get(mail["link"])
    assert second.status_code == 410
    page = httpx.get(local_server.base_url + "/_local/", params=local_server.local_auth)
    assert "user@example.com" in page.text


def test_magic_link_expires(api: httpx.Client, project: dict, local_server: LocalServer) -> None:
    pid = project["project_id"]
    api.post(f"/{pid}/auth/magic-link", json={"email": "late@example.com", "redirect_url": "/"})
    link = httpx.get(
        local_server.base_url + "/_local/outbox",
        params={"email": "late@example.com", **local_server.local_auth},
    ).json()["emails"][0]["link"]
    httpx.post(local_server.base_url + "/_local/clock", json={"advance": 15 * 60 + 1})
    try:
        assert httpx.get(link).status_code == 410
    finally:
        httpx.post(local_server.base_url + "/_local/clock", json={"reset": True})


def test_magic_link_bad_input(api: httpx.Client, project: dict) -> None:
    pid = project["project_id"]
    for body in [
        {"email": "not-an-email"},
        {"email": "a@example.com", "redirect_url": "//evil"},
        {"email": "a@example.com", "redirect_url": "https://evil.example"},
    ]:
        assert api.post(f"/{pid}/auth/magic-link", json=body).status_code == 400, body


def test_magic_link_daily_limit(local_server: LocalServer) -> None:
    # The session server allows 3 emails per project per day.
    with local_server.client() as api:
        pid = api.post("/projects", json={"name": "Limits"}).json()["project_id"]
        for _ in range(3):
            r = api.post(f"/{pid}/auth/magic-link", json={"email": "x@example.com"})
            assert r.status_code == 200
        r = api.post(f"/{pid}/auth/magic-link", json={"email": "x@example.com"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "a day" in r.json()["error"]


def test_tickets(api: httpx.Client, project: dict, local_server: LocalServer) -> None:
    r = api.post(
        "/tickets",
        json={"subject": "Help", "message": "It broke", "project_id": project["project_id"]},
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "open" and isinstance(body["ticket_id"], int)
    assert body["message"] == "Ticket submitted successfully."
    assert api.post("/tickets", json={"subject": "", "message": "m"}).status_code == 400
    tickets = httpx.get(
        local_server.base_url + "/_local/tickets", params=local_server.local_auth
    ).json()["tickets"]
    assert any(t["ticket_id"] == body["ticket_id"] for t in tickets)
    assert (
        "It broke"
        in httpx.get(local_server.base_url + "/_local/", params=local_server.local_auth).text
    )


# -- /_local/ and deletion -----------------------------------------------------------------


def test_info_lists_versions_limits_and_gaps(local_server: LocalServer) -> None:
    info = httpx.get(local_server.base_url + "/_local/info").json()
    assert info["database"]["version"].startswith("18")
    assert set(info["database"]["extensions"]) >= {"vector", "uuid-ossp", "pgcrypto"}
    assert info["limits"]["statement_timeout_s"] == 2
    assert len(info["fidelity_gaps"]) >= 10


def test_delete_project_removes_everything(api: httpx.Client, local_server: LocalServer) -> None:
    pid = api.post("/projects", json={"name": "Doomed"}).json()["project_id"]
    wait_running(api, pid)
    api.post(f"/{pid}/files", json={"filename": "index.html", "content": "bye"})
    assert api.delete(f"/{pid}").json() == {"success": True}
    assert api.get(f"/{pid}").status_code == 404
    assert site_get(local_server, pid, "/").status_code == 404
    assert not (local_server.data_dir / "sites" / pid).exists()
