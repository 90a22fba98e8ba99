"""The local platform against a hostile tenant: deleting a project whatever its SQL did, and
names and links that cannot smuggle control characters or lose their token."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.local.clock import Clock
from mosaicsync.local.outbox import Outbox
from mosaicsync.local.state import State
from tests.conftest import KEY_A, LocalServer
from tests.test_local_api import sql
from tests.test_reliability import create_project

pytestmark = pytest.mark.integration


def tenant(project_id: str) -> str:
    return "tenant_" + project_id.replace("-", "_")


@pytest.fixture(scope="module")
def witness(local_server: LocalServer) -> str:
    """A project that outlives the others, to look at the server's catalogs."""
    return create_project(local_server, "witness")


def leftovers(api: httpx.Client, witness: str, name: str) -> list[dict]:
    response = sql(
        api,
        witness,
        f"SELECT 'database' AS what FROM pg_database WHERE datname = '{name}' "
        f"UNION ALL SELECT 'role' FROM pg_roles WHERE rolname = '{name}'",
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


# Each runs as the doomed project's own role, through the SQL endpoint; {db} is its database.
OWN_CHANGES = {
    "template": ["ALTER DATABASE {db} IS_TEMPLATE true"],
    "connection limit": ["ALTER DATABASE {db} CONNECTION LIMIT 0"],
    "all at once": [
        "ALTER DATABASE {db} SET default_transaction_read_only = on",
        "ALTER DATABASE {db} IS_TEMPLATE true CONNECTION LIMIT 0",
    ],
    "database defaults": [
        "ALTER DATABASE {db} SET default_transaction_read_only = on",
        "ALTER ROLE CURRENT_USER SET lock_timeout = '1ms'",
    ],
    "schema renamed": ["CREATE TABLE t (x int)", "ALTER SCHEMA public RENAME TO mine"],
}


@pytest.mark.parametrize("how", list(OWN_CHANGES))
def test_a_project_is_deleted_whatever_it_did_to_its_database(
    local_server: LocalServer, witness: str, how: str
) -> None:
    doomed = create_project(local_server, f"doomed {how}")
    db = tenant(doomed)
    with local_server.client() as api:
        for statement in OWN_CHANGES[how]:
            response = sql(api, doomed, statement.format(db=db))
            assert response.status_code == 200, (statement, response.text)
        response = api.delete(f"/{doomed}")
        assert response.status_code == 200, response.text
        assert leftovers(api, witness, db) == []
        assert api.get(f"/{doomed}").status_code == 404


def connect(creds: dict, dbname: str | None = None) -> psycopg.Connection:
    return psycopg.connect(
        host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
        dbname=dbname or creds["database"], connect_timeout=10, autocommit=True,
    )  # fmt: skip


def test_a_project_is_deleted_while_its_client_holds_locks(
    local_server: LocalServer, witness: str
) -> None:
    doomed = create_project(local_server, "doomed locked")
    with MosaicClient(local_server.api, KEY_A) as client:
        creds = client.database(doomed)
    conn = connect(creds)
    conn.autocommit = False
    try:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # and stays in the transaction
        with local_server.client() as api:
            response = api.delete(f"/{doomed}")
            assert response.status_code == 200, response.text
            assert leftovers(api, witness, creds["database"]) == []
    finally:
        conn.close()


# Each runs as ANOTHER tenant ({db} is the doomed project's role): what it grants to the doomed
# role makes DROP ROLE refuse until revoked in the other tenant's database.
OTHER_GRANTS = {
    "table privilege": ["CREATE TABLE shared (x int)", "GRANT SELECT ON shared TO {db}"],
    "database privilege": ["GRANT CONNECT ON DATABASE {mine} TO {db}"],
    "default privileges": ["ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {db}"],
    "policy": [
        "CREATE TABLE guarded (x int)",
        "CREATE POLICY p ON guarded TO {db} USING (true)",
    ],
    "then closed": [
        "CREATE TABLE closed (x int)",
        "GRANT SELECT ON closed TO {db}",
        "ALTER DATABASE {mine} SET default_transaction_read_only = on",
    ],
}


@pytest.mark.parametrize("how", list(OTHER_GRANTS))
def test_a_project_is_deleted_whatever_another_tenant_granted_it(
    local_server: LocalServer, witness: str, how: str
) -> None:
    doomed = create_project(local_server, f"doomed grant {how}")
    other = create_project(local_server, f"granter {how}")
    db = tenant(doomed)
    with local_server.client() as api:
        for statement in OTHER_GRANTS[how]:
            response = sql(api, other, statement.format(db=db, mine=tenant(other)))
            assert response.status_code == 200, (statement, response.text)
        response = api.delete(f"/{doomed}")
        assert response.status_code == 200, response.text
        assert leftovers(api, witness, db) == []
        # The granter keeps its data and its project.
        assert api.delete(f"/{other}").status_code == 200


def test_a_second_delete_of_a_gone_project_is_a_404(local_server: LocalServer) -> None:
    doomed = create_project(local_server, "doomed twice")
    with local_server.client() as api:
        template = f"ALTER DATABASE {tenant(doomed)} IS_TEMPLATE true"
        assert sql(api, doomed, template).status_code == 200
        assert api.delete(f"/{doomed}").status_code == 200
        assert api.delete(f"/{doomed}").status_code == 404


# -- magic-link redirects and names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("redirect_url", "path", "query", "fragment"),
    [
        ("/done#frag", "/done", {}, "frag"),
        ("/done?tab=2#frag", "/done", {"tab": ["2"]}, "frag"),
        ("/done#a?b=1", "/done", {}, "a?b=1"),
        ("/done?tab=2", "/done", {"tab": ["2"]}, ""),
    ],
)
def test_the_token_goes_in_the_query_before_any_fragment(
    local_server: LocalServer, redirect_url: str, path: str, query: dict, fragment: str
) -> None:
    email = f"frag{abs(hash(redirect_url))}@example.com"
    with local_server.client() as api:
        pid = api.post("/projects", json={"name": "Fragments"}).json()["project_id"]
        body = {"email": email, "redirect_url": redirect_url}
        assert api.post(f"/{pid}/auth/magic-link", json=body).status_code == 200
    outbox = httpx.get(
        local_server.base_url + "/_local/outbox", params={"email": email, **local_server.local_auth}
    )
    link = outbox.json()["emails"][0]["link"]
    location = urlsplit(httpx.get(link).headers["location"])
    assert location.netloc == f"{pid}.localhost:{local_server.port}"
    assert location.path == path and location.fragment == fragment
    got = parse_qs(location.query)
    assert got.pop("email") == [email] and got.pop("token")[0]
    assert got == query


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028"])
def test_a_project_name_with_a_control_character_is_refused(
    local_server: LocalServer, bad: str
) -> None:
    with local_server.client() as api:
        response = api.post("/projects", json={"name": f"My{bad}App"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert '"name"' in error and f"U+{ord(bad):04X}" in error
        assert all(p["name"] != f"My{bad}App" for p in api.get("/projects").json()["projects"])


@pytest.mark.parametrize("bad", ["\r\nBcc: x@evil.example", "\x00"])
def test_a_ticket_subject_with_a_control_character_is_refused(
    local_server: LocalServer, bad: str
) -> None:
    with local_server.client() as api:
        response = api.post("/tickets", json={"subject": f"Help{bad}", "message": "line 1\nline 2"})
        assert response.status_code == 400, response.text
        assert '"subject"' in response.json()["error"]
        # A message may span lines.
        ok = api.post("/tickets", json={"subject": "Help", "message": "line 1\nline 2"})
        assert ok.status_code == 200, ok.text


def test_an_email_subject_never_holds_a_line_break(tmp_path: Path) -> None:
    # A name stored before names were checked still cannot break the subject line.
    outbox = Outbox(State(tmp_path / "state.sqlite3"), Clock(), emails_per_day=0)
    outbox.send_magic_link(
        "pod-abc", "Evil\r\nBcc: x@evil.example\x00", "a@example.com", "/", "http://h"
    )
    (mail,) = outbox.emails()
    assert mail["subject"] == "Sign in to Evil Bcc: x@evil.example"


# -- names the filesystem cannot hold, and JSON that parses to what no field can take ----------


def test_a_name_segment_over_255_bytes_is_a_400_for_site_files_and_storage(
    local_server: LocalServer,
) -> None:
    project_id = create_project(local_server, "long names")
    too_long = "é" * 126 + ".html"  # 257 bytes in UTF-8, 131 characters
    with local_server.client() as api:
        for path, body in [
            (f"/{project_id}/files", {"filename": f"docs/{too_long}", "content": "<p>x</p>"}),
            (f"/{project_id}/storage/upload-url", {"filename": f"media/{too_long}", "size": 1}),
        ]:
            response = api.post(path, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "257 bytes" in error and "255" in error, error
        assert api.get(f"/{project_id}/files").json()["files"] == []
        assert api.get(f"/{project_id}/storage").json()["files"] == []


def test_a_name_segment_of_255_bytes_is_stored_and_served(local_server: LocalServer) -> None:
    project_id = create_project(local_server, "longest names")
    longest = "a" * 250 + ".html"  # 255 bytes: its temp file beside it must fit too
    with local_server.client() as api:
        response = api.post(f"/{project_id}/files", json={"filename": longest, "content": "<p>ok"})
        assert response.status_code == 200, response.text
        page = httpx.get(f"{local_server.base_url}/sites/{project_id}/{longest}")
        assert page.status_code == 200 and page.text == "<p>ok"
        signed = api.post(
            f"/{project_id}/storage/upload-url", json={"filename": "b" * 251 + ".bin", "size": 2}
        )
        assert signed.status_code == 200, signed.text
        put = httpx.put(signed.json()["upload_url"], content=b"ok")
        assert put.status_code == 200, put.text


LONE_SURROGATE_BODIES = {
    "project name": ("/projects", '{"name": "My\\ud800App"}', '"name"'),
    "ticket subject": ("/tickets", '{"subject": "\\udfff", "message": "hi"}', '"subject"'),
    "file name": ("/{id}/files", '{"filename": "a\\ud800.html", "content": "x"}', '"filename"'),
    "file content": ("/{id}/files", '{"filename": "a.html", "content": "\\ud83d"}', '"content"'),
    "object name": ("/{id}/storage/upload-url", '{"filename": "\\udc80", "size": 1}', '"filename"'),
    "sql query": ("/{id}/sql", '{"query": "SELECT \'\\ud800\'"}', '"query"'),
    "nested": ("/projects", '{"name": "ok", "tags": [{"k": "\\ud800"}]}', '"tags[0].k"'),
    "a key": ("/projects", '{"name": "ok", "\\ud800": 1}', "a key"),
}


@pytest.mark.parametrize("where", list(LONE_SURROGATE_BODIES))
def test_a_lone_surrogate_in_a_json_body_is_a_400_naming_the_field(
    local_server: LocalServer, where: str
) -> None:
    project_id = create_project(local_server, "surrogates")
    path, body, field = LONE_SURROGATE_BODIES[where]
    with local_server.client() as api:
        before = len(api.get("/projects").json()["projects"])
        response = api.post(
            path.format(id=project_id),
            content=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert field in error and "lone surrogate" in error, error
        assert len(api.get("/projects").json()["projects"]) == before
        assert api.get(f"/{project_id}/files").json()["files"] == []
        # A surrogate pair is one character, and welcome.
        ok = api.post("/tickets", content=b'{"subject": "\\ud83d\\ude00", "message": "hi"}')
        assert ok.status_code == 200, ok.text


def test_a_json_integer_over_4300_digits_is_a_400(local_server: LocalServer) -> None:
    project_id = create_project(local_server, "big numbers")
    with local_server.client() as api:
        for path, body in [
            ("/projects", '{"name": ' + "9" * 5000 + "}"),
            (
                f"/{project_id}/storage/upload-url",
                '{"filename": "a.bin", "size": 1' + "0" * 4400 + "}",
            ),
        ]:
            response = api.post(path, content=body.encode())
            assert response.status_code == 400, response.text
            assert "4300-digit limit" in response.json()["error"], response.text
        # A long number that is not an integer is a float, which JSON allows.
        fine = api.post("/projects", content=('{"name": "n", "x": 1.' + "5" * 5000 + "}").encode())
        assert fine.status_code == 200, fine.text
