"""The platform at the command line: every command against the local platform, JSON shapes,
and the rule that nothing prompts when stdin is not a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, LocalServer
from tests.test_deploy import run_cli

pytestmark = pytest.mark.integration


def cli_json(args: list[str], cwd: Path, server: LocalServer, **env: str) -> dict:
    out = run_cli([*args, "--json"], cwd, server)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def project(local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    cwd = tmp_path_factory.mktemp("cli")
    return cli_json(["projects", "create", "CLI App"], cwd, local_server)["project"]["project_id"]


def test_projects_create_list_delete(tmp_path: Path, local_server: LocalServer) -> None:
    answer = cli_json(["projects", "create", "Listed"], tmp_path, local_server)
    assert answer["status"] == "ok" and answer["schema"] == "mosaicsync/1"
    created = answer["project"]
    assert created["status"] == "running"
    listed = cli_json(["projects", "list"], tmp_path, local_server)
    assert created["project_id"] in [p["project_id"] for p in listed["projects"]]
    # No terminal: deleting without --yes fails at once with the flag to pass.
    out = run_cli(
        ["projects", "delete", created["project_id"]], tmp_path, local_server, check=False
    )
    assert out.returncode == 2 and "--yes" in out.stderr
    gone = cli_json(["projects", "delete", created["project_id"], "--yes"], tmp_path, local_server)
    assert gone["deleted"] is True
    listed = cli_json(["projects", "list"], tmp_path, local_server)
    assert created["project_id"] not in [p["project_id"] for p in listed["projects"]]


def test_sql_json_and_table(tmp_path: Path, local_server: LocalServer, project: str) -> None:
    out = run_cli(["sql", "select 1 as x", "--json", "--project", project], tmp_path, local_server)
    assert json.loads(out.stdout) == [{"x": 1}]
    # Not a terminal and no --json: JSON too, so pipes get data.
    out = run_cli(["sql", "select 2 as y", "--project", project], tmp_path, local_server)
    assert json.loads(out.stdout) == [{"y": 2}]
    query = tmp_path / "q.sql"
    query.write_text("select 'a' as letter union all select 'b'")
    out = run_cli(["sql", "-f", str(query), "--project", project], tmp_path, local_server)
    assert json.loads(out.stdout) == [{"letter": "a"}, {"letter": "b"}]
    bad = run_cli(
        ["sql", "select * fromm t", "--json", "--project", project],
        tmp_path,
        local_server,
        check=False,
    )
    assert bad.returncode == 5
    assert json.loads(bad.stdout)["error"]["code"] == "sql"


@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "text"])
def test_sql_file_that_is_not_utf8_is_a_clear_error(
    tmp_path: Path, local_server: LocalServer, project: str, json_flag: list[str]
) -> None:
    # It was a UnicodeDecodeError traceback, exit 1, with nothing on stdout under --json.
    query = tmp_path / "latin.sql"
    query.write_bytes(b"select 1;\nselect 'caf\xe9' as x;\n")
    out = run_cli(
        ["sql", "-f", str(query), *json_flag, "--project", project],
        tmp_path,
        local_server,
        check=False,
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, out.stdout + out.stderr
    message = "latin.sql: not UTF-8 text (byte 21, line 2); save it as UTF-8"
    if json_flag:
        error = json.loads(out.stdout)["error"]
        assert (error["error"], error["code"], error["exit_code"]) == (message, "config", 2)
    else:
        assert out.stdout == "" and message in out.stderr


def test_sql_file_with_a_byte_order_mark(
    tmp_path: Path, local_server: LocalServer, project: str
) -> None:
    query = tmp_path / "bom.sql"
    query.write_bytes(b"\xef\xbb\xbfselect 1 as x")
    out = run_cli(["sql", "-f", str(query), "--json", "--project", project], tmp_path, local_server)
    assert json.loads(out.stdout) == [{"x": 1}]


def test_db_url_masks_the_password(tmp_path: Path, local_server: LocalServer, project: str):
    with httpx.Client(base_url=local_server.api, headers={"X-API-Key": KEY_A}) as api:
        password = api.get(f"/{project}/database").json()["password"]
    masked = run_cli(["db", "url", "--project", project], tmp_path, local_server)
    assert password not in masked.stdout + masked.stderr
    assert ":***@" in masked.stdout
    data = cli_json(["db", "url", "--project", project], tmp_path, local_server)
    assert data["password"] == "***" and password not in json.dumps(data)
    shown = run_cli(["db", "url", "--show-password", "--project", project], tmp_path, local_server)
    assert password in shown.stdout


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_db_shell_passes_the_password_in_the_environment(
    tmp_path: Path, local_server: LocalServer, project: str
) -> None:
    out = run_cli(
        ["db", "shell", "--project", project, "--", "-Atc", "select current_user"],
        tmp_path,
        local_server,
    )
    assert out.stdout.strip() == "tenant_" + project.replace("-", "_")


def test_storage_put_ls_rm(tmp_path: Path, local_server: LocalServer, project: str) -> None:
    payload = tmp_path / "movie.mp4"
    payload.write_bytes(os.urandom(300_000))
    put = cli_json(
        ["storage", "put", str(payload), "--name", "media/movie.mp4", "--project", project],
        tmp_path,
        local_server,
    )
    assert put["size"] == 300_000
    assert httpx.get(put["url"]).content == payload.read_bytes()
    listing = cli_json(["storage", "ls", "--project", project], tmp_path, local_server)
    assert "media/movie.mp4" in [f["filename"] for f in listing["files"]]
    assert set(listing["usage"]) >= {"used", "limit", "percent"}
    cli_json(["storage", "rm", "media/movie.mp4", "--project", project], tmp_path, local_server)
    listing = cli_json(["storage", "ls", "--project", project], tmp_path, local_server)
    assert "media/movie.mp4" not in [f["filename"] for f in listing["files"]]


def test_magic_link_lands_in_the_outbox(tmp_path: Path, local_server: LocalServer, project: str):
    answer = cli_json(
        ["auth", "magic-link", "cli@example.com", "--redirect", "/welcome", "--project", project],
        tmp_path,
        local_server,
    )
    assert answer["success"] is True
    emails = httpx.get(
        local_server.base_url + "/_local/outbox",
        params={"email": "cli@example.com", **local_server.local_auth},
    ).json()["emails"]
    assert emails and emails[0]["project_id"] == project


def test_ticket_with_diagnostics(tmp_path: Path, local_server: LocalServer, project: str) -> None:
    answer = cli_json(
        [
            "ticket",
            "--subject",
            "help",
            "--message",
            "it broke",
            "--diagnostics",
            "--project",
            project,
        ],
        tmp_path,
        local_server,
    )["ticket"]
    assert isinstance(answer["ticket_id"], int) and answer["status"] == "open"
    tickets = httpx.get(
        local_server.base_url + "/_local/tickets", params=local_server.local_auth
    ).json()["tickets"]
    mine = next(t for t in tickets if t["ticket_id"] == answer["ticket_id"])
    assert "mosaicsync" in mine["message"] and KEY_A not in mine["message"]


def test_doctor_passes(tmp_path: Path, local_server: LocalServer) -> None:
    report = cli_json(["doctor"], tmp_path, local_server)
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"api url", "api key", "reachable", "key accepted", "clock skew"} <= names


def test_login_reads_stdin_and_stores_0600(tmp_path: Path, local_server: LocalServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=local_server.api, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "login", "--json"],
        input=KEY_A + "\n",
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert KEY_A not in out.stdout + out.stderr
    path = Path(json.loads(out.stdout)["credentials"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    listed = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "projects", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "login"],
        input="mk_wrong_key\n",
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 3 and "mosaicsync login" in bad.stderr


def test_verbose_shows_requests_without_secrets(
    tmp_path: Path, local_server: LocalServer, project: str
) -> None:
    out = run_cli(["sql", "select 1", "--verbose", "--project", project], tmp_path, local_server)
    assert f"POST /v1/project/{project}/sql -> 200" in out.stderr


def test_every_command_has_help_with_an_example() -> None:
    from mosaicsync.cli import cli

    def walk(group, prefix=""):
        for name, command in group.commands.items():
            yield prefix + name, command
            if hasattr(command, "commands"):
                yield from walk(command, prefix + name + " ")

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, command in walk(cli):
        assert command.help and "Example:" in command.help, name
        top = name.split()[0]
        assert f"mosaicsync {top}" in readme, f"{top} is not in the README"
