"""Previews end to end: the real CLI against the real local platform, one project per preview,
seeded, promoted to production byte for byte from the preview's own stored deploy."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.output import human_age
from mosaicsync.previews import Registry, default_name, parse_ttl
from tests.conftest import KEY_A, LocalServer
from tests.test_history import cli, served_site

pytestmark = pytest.mark.integration

SEED = """INSERT INTO todos (task) VALUES ('one');
INSERT INTO todos (task) VALUES ('two');
INSERT INTO todos (task) VALUES ('three');
"""


def rows(server: LocalServer, project_id: str, query: str) -> list[dict]:
    with MosaicClient(server.api, KEY_A) as client:
        return client.sql(project_id, query)


def applied(server: LocalServer, project_id: str) -> list[int]:
    got = rows(server, project_id, "SELECT version::int AS v FROM mosaicsync.migrations")
    return sorted(r["v"] for r in got)


def site_only(served: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in served.items() if k.startswith("site:")}


@pytest.fixture
def todo(tmp_path: Path, local_server: LocalServer) -> tuple[Path, str]:
    cli(["init", "app", "--template", "todo", "--name", "Todo"], tmp_path, local_server)
    folder = tmp_path / "app"
    cli(["link", "--create", "Todo"], folder, local_server)
    (folder / "seed.sql").write_text(SEED)
    toml = folder / "mosaic.toml"
    toml.write_text(
        toml.read_text().replace('dir = "migrations"', 'dir = "migrations"\nseed = "seed.sql"')
    )
    assert 'seed = "seed.sql"' in toml.read_text()
    cli(["deploy"], folder, local_server)
    project_id = tomllib.loads(toml.read_text())["app"]["project_id"]
    return folder, project_id


def test_preview_seed_promote_list_delete(
    todo: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, production = todo
    first = json.loads(cli(["preview", "feature-x", "--json"], folder, local_server).stdout)
    pid = first["preview"]["project_id"]
    assert first["created"] and pid != production and first["url"]
    page = (folder / "public" / "index.html").read_bytes()
    assert served_site(local_server, pid)["site:index.html"] == page
    assert rows(local_server, pid, "SELECT count(*) AS n FROM todos") == [{"n": 3}]
    assert rows(local_server, production, "SELECT count(*) AS n FROM todos") == [{"n": 0}]

    (folder / "migrations" / "0002_add_note.sql").write_text(
        "ALTER TABLE todos ADD COLUMN note text;\n"
    )
    (folder / "public" / "index.html").write_text(
        page.decode().replace("</body>", "<p>x</p></body>")
    )
    second = json.loads(cli(["preview", "feature-x", "--json"], folder, local_server).stdout)
    assert second["preview"]["project_id"] == pid and not second["created"]
    assert second["migrations_applied"] == 1 and second["seeded"] == []
    assert applied(local_server, pid) == [1, 2] and applied(local_server, production) == [1]
    assert rows(local_server, pid, "SELECT count(*) AS n FROM todos") == [{"n": 3}]
    preview_bytes = site_only(served_site(local_server, pid))
    assert b"<p>x</p>" in preview_bytes["site:index.html"]

    planned = json.loads(
        cli(["promote", "feature-x", "--dry-run", "--json"], folder, local_server).stdout
    )
    assert planned["migrations"] == ["0002_add_note.sql"] and applied(local_server, production) == [
        1
    ]
    promoted = json.loads(
        cli(["promote", "feature-x", "--yes", "--json"], folder, local_server).stdout
    )
    # Planned and applied migrations are named alike: by their files.
    assert promoted["migrations"] == ["0002_add_note.sql"]
    assert applied(local_server, production) == [1, 2]
    assert site_only(served_site(local_server, production)) == preview_bytes
    assert rows(local_server, production, "SELECT count(*) AS n FROM todos") == [{"n": 0}]
    history = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    assert history["deploys"][0]["kind"] == "promote"
    assert history["deploys"][0]["message"].startswith("promote of feature-x #")

    listed = json.loads(cli(["preview", "list", "--json"], folder, local_server).stdout)
    assert [p["name"] for p in listed["previews"]] == ["feature-x"]
    assert listed["previews"][0]["url"] and listed["previews"][0]["last_deploy_id"]

    # A short-lived preview, and a project that is no preview: prune takes only the first.
    short = json.loads(
        cli(["preview", "short", "--ttl", "0s", "--no-seed", "--json"], folder, local_server).stdout
    )
    with MosaicClient(local_server.api, KEY_A) as client:
        bystander = client.create_project("Todo · not-a-preview")["project_id"]
    pruned = json.loads(cli(["preview", "prune", "--json"], folder, local_server).stdout)
    assert [p["name"] for p in pruned["deleted"]] == ["short"]
    cli(["preview", "delete", "feature-x", "--yes"], folder, local_server)
    projects = json.loads(cli(["projects", "list", "--json"], folder, local_server).stdout)
    ids = {p["project_id"] for p in projects["projects"]}
    assert pid not in ids and short["preview"]["project_id"] not in ids
    assert bystander in ids and production in ids
    listed = json.loads(cli(["preview", "list", "--json"], folder, local_server).stdout)
    assert listed["previews"] == []


def test_what_a_preview_refuses(todo: tuple[Path, str], local_server: LocalServer) -> None:
    folder, production = todo
    bad = cli(["preview", "no spaces", "--no-seed"], folder, local_server, code=2)
    assert "not a valid preview name" in bad.stderr
    # A valid NAME whose project name (`<app> · <NAME>`) the platform finds too long.
    toml = folder / "mosaic.toml"
    kept = toml.read_text()
    toml.write_text(kept.replace('name = "Todo"', f'name = "{"T" * 60}"'))
    long = cli(["preview", "n" * 63, "--no-seed"], folder, local_server, code=5)
    assert "for preview 'nnn" in long.stderr and "shorter preview NAME" in long.stderr
    toml.write_text(kept)
    made = json.loads(cli(["preview", "a", "--no-seed", "--json"], folder, local_server).stdout)
    pid = made["preview"]["project_id"]
    nested = cli(["preview", "b", "--project", pid, "--no-seed"], folder, local_server, code=2)
    assert "a preview of a preview" in nested.stderr

    # A seed file with an error: file:line:col, the preview left marked failed; a rerun after
    # the fix seeds it (each file applied once: the failed one left nothing).
    (folder / "seed.sql").write_text(SEED + "INSERT INTO todos (titel) VALUES ('x');\n")
    broken = cli(["preview", "seeded"], folder, local_server, code=7)
    assert "seed.sql:4:" in broken.stderr
    listed = json.loads(cli(["preview", "list", "--json"], folder, local_server).stdout)
    assert {p["name"]: p["state"] for p in listed["previews"]}["seeded"] == "failed"
    (folder / "seed.sql").write_text(SEED)
    fixed = json.loads(cli(["preview", "seeded", "--json"], folder, local_server).stdout)
    assert fixed["preview"]["state"] == "ready" and fixed["seeded"] == ["seed.sql"]
    assert (
        rows(local_server, fixed["preview"]["project_id"], "SELECT count(*) AS n FROM todos")[0][
            "n"
        ]
        == 3
    )

    # A migration production has and the preview never saw: not what was reviewed.
    (folder / "migrations" / "0002_hotfix.sql").write_text("CREATE TABLE hotfix (x int);\n")
    cli(["migrate", "up"], folder, local_server)
    unseen = cli(["promote", "a", "--yes"], folder, local_server, code=7)
    assert "2 is applied on production but not on the preview" in unseen.stderr

    # A migration that changed in the folder since the preview applied it: named, nothing done.
    migration = folder / "migrations" / "0001_create_todos.sql"
    migration.write_text(migration.read_text() + "\n-- edited\n")
    before = served_site(local_server, production)
    mismatch = cli(["promote", "a", "--yes"], folder, local_server, code=7)
    assert "1 changed in the folder" in mismatch.stderr
    assert served_site(local_server, production) == before

    cli(["preview", "gone", "--ttl", "0s", "--no-seed"], folder, local_server)
    expired = cli(["promote", "gone", "--yes"], folder, local_server, code=10)
    assert "expired" in expired.stderr
    unknown = cli(["promote", "nope", "--yes"], folder, local_server, code=4)
    assert "previews: a, gone, seeded" in unknown.stderr
    # A row that points at a project which is not this parent's preview (production itself,
    # or another app): never deleted, whatever the record says.
    with MosaicClient(local_server.api, KEY_A) as client:
        other = client.create_project("Another App")["project_id"]
        registry = Registry(client, production)
        registry.add("wrong", production, 3600, "x@y")
        registry.update("wrong", state="ready")
        registry.add("other", other, 3600, "x@y")
        for name, pid in (("wrong", production), ("other", other)):
            refused = cli(["preview", "delete", name, "--yes"], folder, local_server, code=2)
            assert "does not say it is one: it was not deleted" in refused.stderr
            assert client.get_project(pid)["project_id"] == pid
            registry.remove(name)
        client.delete_project(other)
    for name in ("a", "gone", "seeded"):
        cli(["preview", "delete", name, "--yes"], folder, local_server)


def test_a_promote_that_cannot_publish_leaves_production_alone(
    todo: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, production = todo
    migrations = folder / "migrations"
    (migrations / "0003_later.sql").write_text("CREATE TABLE later (x int);\n")
    page = folder / "public" / "index.html"
    page.write_text(page.read_text().replace("</body>", "<p>reviewed</p></body>"))
    made = json.loads(cli(["preview", "a", "--no-seed", "--json"], folder, local_server).stdout)
    pid = made["preview"]["project_id"]
    assert applied(local_server, pid) == [1, 3] and applied(local_server, production) == [1]
    before = served_site(local_server, production)

    # A migration in the folder below the preview's newest that the preview never applied
    # would reach production unreviewed: refused, named.
    (migrations / "0002_between.sql").write_text("CREATE TABLE between_ (x int);\n")
    unreviewed = cli(["promote", "a", "--yes"], folder, local_server, code=7)
    assert "2 is in the folder but not applied on the preview" in unreviewed.stderr
    (migrations / "0002_between.sql").unlink()

    # The preview's stored bytes are gone: the restore stops before anything changes, and the
    # migration it would have applied first is not applied either.
    with MosaicClient(local_server.api, KEY_A) as client:
        for o in client.list_storage(pid)["files"]:
            if o["filename"].startswith(".mosaicsync/history/packs/"):
                client.delete_object(pid, o["filename"])
    gone = cli(["promote", "a", "--yes"], folder, local_server, code=10)
    assert "no longer in this project's storage" in gone.stderr
    assert applied(local_server, production) == [1]
    assert served_site(local_server, production) == before
    cli(["preview", "delete", "a", "--yes"], folder, local_server)


def test_ttl_forms() -> None:
    assert parse_ttl("7d") == 7 * 86400 and parse_ttl("1w2d") == 9 * 86400
    assert parse_ttl("0s") == 0 and parse_ttl("90m") == 5400
    for bad in ("", "7", "d", "7x", "-1d", "1.5h"):
        with pytest.raises(Exception, match="not a duration"):
            parse_ttl(bad)


def test_a_preview_age_is_shown_in_the_largest_whole_unit() -> None:
    assert [human_age(s) for s in (0, 59, 60, 3599, 3600, 86399, 86400, 9 * 86400)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h", "23 h", "1 d", "9 d",
    ]  # fmt: skip


def test_the_default_name_is_the_git_branch_when_it_is_a_valid_name(tmp_path: Path) -> None:
    assert default_name(tmp_path) == "preview"  # not a git work tree
    subprocess.run(["git", "init", "-q", "-b", "feature/login", str(tmp_path)], check=True)
    assert default_name(tmp_path) == "feature/login"
    subprocess.run(["git", "-C", str(tmp_path), "checkout", "-q", "-b", "x" * 70], check=True)
    assert default_name(tmp_path) == "preview"  # a branch that is no valid preview name
