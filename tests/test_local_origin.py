"""Tenant content and the platform's own pages share 127.0.0.1:PORT: what keeps them apart.

Foreign Host names are refused (DNS rebinding), `/_local/` shows mail and tickets only to a key
(its own) or to the operator's start token, uploaded HTML is a sandboxed download, and
`/sites/{id}/` pages run sandboxed. The browser test checks the whole in a real Chromium.
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.browser import chromium_page, needs_chromium
from tests.conftest import KEY_A, KEY_B, LocalServer
from tests.test_local_api import presign, site_get, wait_running

pytestmark = pytest.mark.integration

VICTIM = "victim@example.com"
# A tenant's page that reads the platform's outbox and reports what it got in its title.
SPY = """<!doctype html><html><head><title>pending</title></head><body><script>
fetch('/_local/outbox').then(function (r) { return r.text(); }).then(
  function (t) { document.title = 'read:' + t.slice(0, 4000); },
  function (e) { document.title = 'failed:' + e; });
</script></body></html>"""


def new_project(server: LocalServer, key: str, name: str) -> str:
    with server.client(key) as api:
        pid = api.post("/projects", json={"name": name}).json()["project_id"]
        wait_running(api, pid)
    return pid


@pytest.fixture(scope="module")
def two_accounts(local_server: LocalServer) -> dict[str, str]:
    """A project of each account, each with a magic-link email and a ticket."""
    pid_a = new_project(local_server, KEY_A, "Origin A")
    pid_b = new_project(local_server, KEY_B, "Origin B")
    for key, pid, email in ((KEY_A, pid_a, "alice@example.com"), (KEY_B, pid_b, VICTIM)):
        with local_server.client(key) as api:
            r = api.post(f"/{pid}/auth/magic-link", json={"email": email})
            assert r.status_code == 200, r.text
            r = api.post("/tickets", json={"subject": f"t {pid}", "message": f"m {email}"})
            assert r.status_code == 200, r.text
    return {"a": pid_a, "b": pid_b}


def local(server: LocalServer, path: str, **kwargs) -> httpx.Response:
    return httpx.get(server.base_url + path, **kwargs)


def test_a_foreign_host_is_refused(local_server: LocalServer) -> None:
    port = local_server.port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
        r = local(local_server, "/_local/info", headers={"Host": host})
        assert r.status_code == 421, host
        assert "DNS rebinding" in r.json()["error"] and "127.0.0.1" in r.json()["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert local(local_server, "/_local/info", headers={"Host": host}).status_code == 200


def test_outbox_and_tickets_need_credentials(
    local_server: LocalServer, two_accounts: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/_local/outbox"),
        ("DELETE", "/_local/outbox"),
        ("GET", "/_local/tickets"),
        ("GET", "/_local/"),
    ):
        r = httpx.request(method, local_server.base_url + path)
        assert r.status_code == 401, (method, path)
        assert "X-API-Key" in r.json()["error"] and "token" in r.json()["error"]
        wrong = httpx.request(method, local_server.base_url + path, params={"token": "guess"})
        assert wrong.status_code == 401, (method, path)
    assert VICTIM not in local(local_server, "/_local/").text


def test_a_key_sees_only_its_own_mail_and_tickets(
    local_server: LocalServer, two_accounts: dict[str, str]
) -> None:
    as_a = {"X-API-Key": KEY_A}
    emails = local(local_server, "/_local/outbox", headers=as_a).json()["emails"]
    assert "alice@example.com" in [m["to"] for m in emails]
    assert all(m["project_id"] != two_accounts["b"] for m in emails)
    tickets = local(local_server, "/_local/tickets", headers=as_a).json()["tickets"]
    assert f"m {'alice@example.com'}" in [t["message"] for t in tickets]
    assert all(VICTIM not in t["message"] for t in tickets)
    page = local(local_server, "/_local/", headers=as_a).text
    assert "alice@example.com" in page and VICTIM not in page

    # The operator's start token sees every account's mail.
    everything = local(local_server, "/_local/outbox", params=local_server.local_auth).json()
    assert {"alice@example.com", VICTIM} <= {m["to"] for m in everything["emails"]}
    page = local(local_server, "/_local/", params=local_server.local_auth)
    assert VICTIM in page.text and page.headers["referrer-policy"] == "no-referrer"

    # A's key clears A's mail only.
    deleted = httpx.delete(local_server.base_url + "/_local/outbox", headers=as_a).json()
    assert deleted["deleted"] >= 1
    left = local(local_server, "/_local/outbox", params=local_server.local_auth).json()["emails"]
    assert VICTIM in [m["to"] for m in left]
    assert "alice@example.com" not in [m["to"] for m in left]


def upload_object(server: LocalServer, pid: str, name: str, data: bytes) -> str:
    with server.client(KEY_A) as api:
        r = httpx.put(presign(api, pid, name, len(data)), content=data)
    assert r.status_code == 200, r.text
    return f"{server.base_url}/_storage/{pid}/{name}"


def test_uploaded_html_is_a_sandboxed_download(
    local_server: LocalServer, two_accounts: dict[str, str]
) -> None:
    pid = two_accounts["a"]
    for name in ("spy.html", "spy.svg"):
        r = httpx.get(upload_object(local_server, pid, name, SPY.encode()))
        assert r.status_code == 200 and r.content == SPY.encode()
        assert r.headers["content-disposition"].startswith("attachment;"), name
        assert r.headers["content-security-policy"] == "sandbox"
        assert r.headers["x-content-type-options"] == "nosniff"
    r = httpx.get(upload_object(local_server, pid, "pic.png", b"\x89PNG\r\n\x1a\n"))
    assert r.headers["content-type"] == "image/png" and "content-disposition" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"


def test_path_style_site_pages_are_sandboxed(
    local_server: LocalServer, two_accounts: dict[str, str]
) -> None:
    pid = two_accounts["a"]
    with local_server.client(KEY_A) as api:
        r = api.post(f"/{pid}/files", json={"filename": "index.html", "content": SPY})
        assert r.status_code == 200, r.text
    csp = local(local_server, f"/sites/{pid}/").headers["content-security-policy"]
    assert csp.split()[0] == "sandbox" and "allow-scripts" in csp
    assert "allow-same-origin" not in csp
    # On its own origin, {id}.localhost, the site is not sandboxed.
    assert "content-security-policy" not in site_get(local_server, pid).headers


@needs_chromium
def test_a_tenant_page_cannot_read_the_outbox_in_a_browser(
    local_server: LocalServer, two_accounts: dict[str, str]
) -> None:
    pid = two_accounts["a"]
    with local_server.client(KEY_A) as api:
        r = api.post(f"/{pid}/files", json={"filename": "spy.html", "content": SPY})
        assert r.status_code == 200, r.text
    site_page = f"{local_server.base_url}/sites/{pid}/spy.html"
    stored_page = upload_object(local_server, pid, "page/spy.html", SPY.encode())
    # Another account's live magic link is in the outbox.
    with local_server.client(KEY_B) as api:
        r = api.post(f"/{two_accounts['b']}/auth/magic-link", json={"email": VICTIM})
        assert r.status_code == 200, r.text

    with chromium_page() as page:
        for url in (site_page, stored_page):
            try:
                page.goto(url)
            except PlaywrightError:
                # Not rendered at all (a download): no script of the page ran.
                assert page.evaluate("location.href") != url
                continue
            title = page.wait_for_function(
                "document.title !== 'pending' && document.title"
            ).json_value()
            assert VICTIM not in title and "/auth/verify" not in title, (url, title)
