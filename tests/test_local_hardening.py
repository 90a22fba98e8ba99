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
