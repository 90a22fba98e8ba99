"""The preflight checks end to end: the real CLI and a real watch against the local platform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaicsync import leaks
from mosaicsync.api import MosaicClient
from mosaicsync.config import load_config
from mosaicsync.contract import extension
from mosaicsync.deploy import Deployer, DeployOptions
from mosaicsync.events import Checked
from mosaicsync.findings import BROKEN_REFERENCE, SECRET
from mosaicsync.references import is_checked
from tests.conftest import KEY_A, LocalServer
from tests.test_deploy import project_dir, project_id_of, run_cli, site_get  # noqa: F401
from tests.test_watch import Run, cli_env, make_site, served, wait_until

pytestmark = pytest.mark.integration

EXIT_CHECKS = 9


def deployed_paths(server: LocalServer, pid: str) -> list[str]:
    with MosaicClient(server.api, KEY_A) as client:
        return sorted(f["filename"] for f in client.list_files(pid))


def test_the_key_in_use_in_app_js_stops_the_deploy_before_any_upload(
    project_dir: Path,  # noqa: F811
    local_server: LocalServer,
) -> None:
    pid = project_id_of(project_dir)
    app = project_dir / "public" / "app.js"
    app.write_text(app.read_text() + f'\n// ok\nconst headers = {{"X-API-Key": "{KEY_A}"}};\n')
    line = app.read_text().splitlines().index(f'const headers = {{"X-API-Key": "{KEY_A}"}};') + 1
    column = len('const headers = {"X-API-Key": "') + 1

    human = run_cli(["deploy"], project_dir, local_server, check=False)  # asserts no key shown
    assert human.returncode == EXIT_CHECKS, human.stderr
    assert f"app.js:{line}:{column}" in human.stderr
    assert "the API key in use" in human.stderr and "mk_" in human.stderr
    assert "the Mosaic API is for the developer's machine" in human.stderr

    out = run_cli(["deploy", "--json"], project_dir, local_server, check=False)
    assert out.returncode == EXIT_CHECKS
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "check" and error["exit_code"] == EXIT_CHECKS
    secret = [f for f in error["findings"] if f["kind"] == SECRET]
    assert [(f["file"], f["line"], f["column"], f["severity"]) for f in secret] == [
        ("app.js", line, column, "error")
    ]
    # Nothing reached the platform: not the other files either, and no manifest.
    assert deployed_paths(local_server, pid) == []
    assert site_get(local_server, pid, "/").status_code == 404

    # --allow-secret never passes the key in use.
    again = run_cli(["deploy", "--allow-secret", "app.js"], project_dir, local_server, check=False)
    assert again.returncode == EXIT_CHECKS
    assert deployed_paths(local_server, pid) == []


def test_the_database_password_is_found_and_a_reviewed_file_may_pass(
    project_dir: Path,  # noqa: F811
    local_server: LocalServer,
) -> None:
    pid = project_id_of(project_dir)
    with MosaicClient(local_server.api, KEY_A) as client:
        database = client.database(pid)
    password = database["password"]
    config = project_dir / "public" / "config.json"
    config.write_text(json.dumps({"db": {"password": password}}) + "\n")

    out = run_cli(["deploy", "--json"], project_dir, local_server, check=False)
    assert out.returncode == EXIT_CHECKS
    assert password not in out.stdout + out.stderr
    findings = json.loads(out.stdout)["error"]["findings"]
    assert [(f["file"], f["line"]) for f in findings if f["kind"] == SECRET] == [("config.json", 1)]
    assert "database password" in json.dumps(findings)

    status = run_cli(["status", "--json"], project_dir, local_server)
    assert password not in status.stdout + status.stderr
    shown = json.loads(status.stdout)["findings"]
    assert [f["file"] for f in shown if f["severity"] == "error"] == ["config.json"]

    ok = run_cli(
        ["deploy", "--json", "--allow-secret", "public/config.json"], project_dir, local_server
    )
    assert "config.json" not in json.dumps(json.loads(ok.stdout)["findings"])
    assert "config.json" in deployed_paths(local_server, pid)


def test_a_no_op_deploy_reads_no_file_and_an_edit_reads_one(
    project_dir: Path,  # noqa: F811
    local_server: LocalServer,
) -> None:
    config = load_config(project_dir / "mosaic.toml")
    pid = project_id_of(project_dir)

    def deploy() -> Checked:
        seen: list[Any] = []
        with MosaicClient(local_server.api, KEY_A) as client:
            Deployer(config, client, pid, DeployOptions(), seen.append).run()
        (checked,) = [e for e in seen if isinstance(e, Checked)]
        return checked

    first = deploy()
    texts = [p for p in (project_dir / "public").rglob("*.*") if p.suffix != ".png"]
    assert first.files_read == len(texts) > 0  # an image cannot carry a pasted key as text
    assert deploy().files_read == 0
    (project_dir / "public" / "app.js").write_text("console.log('edited');\n")
    assert deploy().files_read == 1
    assert deploy().files_read == 0


def test_broken_references_warn_and_fail_under_strict(
    project_dir: Path,  # noqa: F811
    local_server: LocalServer,
) -> None:
    public = project_dir / "public"
    (public / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    index = public / "index.html"
    index.write_text(index.read_text().replace("</body>", '<img src="Logo.png"></body>'))
    (public / "docs").mkdir()
    (public / "docs" / "x.html").write_text('<a href="../drafts/plan.html">plan</a>\n')
    (public / "drafts").mkdir()
    (public / "drafts" / "plan.html").write_text("<p>draft</p>\n")
    (project_dir / ".mosaicignore").write_text("# work in progress\ndrafts/\n")

    check = run_cli(["check", "--json"], project_dir, local_server, check=False)
    assert check.returncode == EXIT_CHECKS, check.stdout + check.stderr
    found = {
        f["file"]: f
        for f in json.loads(check.stdout)["error"]["findings"]
        if f["kind"] == BROKEN_REFERENCE
    }
    assert set(found) == {"index.html", "docs/x.html"}
    assert "logo.png" in found["index.html"]["message"]  # differs only in letter case
    assert "drafts/" in found["docs/x.html"]["message"]  # the rule that excluded it
    assert found["docs/x.html"]["line"] == 1

    warned = run_cli(["deploy", "--json"], project_dir, local_server)
    kinds = [(f["file"], f["severity"]) for f in json.loads(warned.stdout)["findings"]]
    assert sorted(kinds) == [("docs/x.html", "warning"), ("index.html", "warning")]

    strict = run_cli(["deploy", "--strict"], project_dir, local_server, check=False)
    assert strict.returncode == EXIT_CHECKS and "index.html:" in strict.stderr


def test_a_clean_site_checks_clean(project_dir: Path, local_server: LocalServer) -> None:  # noqa: F811
    out = run_cli(["check", "--json"], project_dir, local_server)
    data = json.loads(out.stdout)
    assert data["findings"] == [] and data["files"] > 0


def test_watch_never_syncs_a_save_holding_the_key(tmp_path: Path, local_server: LocalServer):
    with MosaicClient(local_server.api, KEY_A) as client:
        site = tmp_path / "site"
        pid = make_site(site, client)
    run = Run(["watch"], site, cli_env(local_server))
    try:
        run.wait_for("watching")
        public = site / "public"
        (public / "app.js").write_text(f"const key = '{KEY_A}';\n")
        finding = run.wait_for("finding")
        assert (finding["kind"], finding["file"], finding["line"]) == (SECRET, "app.js", 1)
        (public / "style.css").write_text("body { color: red; }\n")
        wait_until(lambda: served(local_server, pid, "style.css", "body { color: red; }\n"))
        assert served(local_server, pid, "app.js", "console.log('app');\n")
        (public / "app.js").write_text("console.log('fixed');\n")
        wait_until(lambda: served(local_server, pid, "app.js", "console.log('fixed');\n"))
    finally:
        run.stop()
    assert KEY_A not in json.dumps(run.events) + run.log.read_text()


def test_storage_put_runs_the_same_secret_search(
    project_dir: Path,  # noqa: F811
    local_server: LocalServer,
) -> None:
    dump = project_dir / "dump.sql"
    dump.write_text(f"-- key: {KEY_A}\nINSERT INTO t VALUES (1);\n")
    refused = run_cli(
        ["storage", "put", str(dump), "--json"], project_dir, local_server, check=False
    )
    assert refused.returncode == EXIT_CHECKS
    assert json.loads(refused.stdout)["error"]["findings"][0]["line"] == 1
    again = run_cli(
        ["storage", "put", str(dump), "--allow-secret"], project_dir, local_server, check=False
    )
    assert again.returncode == EXIT_CHECKS  # never the key in use

    notes = project_dir / "notes.txt"
    notes.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n")
    assert (
        run_cli(["storage", "put", str(notes)], project_dir, local_server, check=False).returncode
        == EXIT_CHECKS
    )
    run_cli(["storage", "put", str(notes), "--allow-secret"], project_dir, local_server)
    listed = run_cli(["storage", "ls", "--json"], project_dir, local_server)
    assert [f["filename"] for f in json.loads(listed.stdout)["files"]] == ["notes.txt"]


_NAMES = ["index.html", "A.HTML", "site.css", "app.js", "photo.JPG", "x.tar.gz", ".htaccess",
          "README", "font.woff2", "data.json", ".env.html", "page.html.bak", "v1.2"]  # fmt: skip


@given(st.lists(st.text(min_size=1, max_size=6).filter(lambda t: "/" not in t), max_size=3),
       st.sampled_from(_NAMES), st.text(max_size=4).filter(lambda t: "/" not in t))  # fmt: skip
def test_the_rules_a_check_asks_once_per_type_go_by_type_alone(
    folders: list[str], name: str, prefix: str
) -> None:
    """The check asks whether a file is searched and whether it is parsed once per extension;
    any path of that type must get the same answers."""
    path = "/".join([*folders, prefix + name])
    twin = "elsewhere/twin" + extension(path)
    assert extension(twin) == extension(path)
    assert leaks.worth_reading(path) == leaks.worth_reading(twin)
    assert is_checked(path) == is_checked(twin)
