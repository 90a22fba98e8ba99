"""`mosaicsync deploy` end to end: the real CLI against the real local platform."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest

from mosaicsync.api import MosaicClient
from tests.conftest import KEY_A, LocalServer, python_against

pytestmark = pytest.mark.integration


def run_cli(
    args: list[str], cwd: Path, server: LocalServer, *, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        input=input if input is not None else "",
    )
    assert KEY_A not in out.stdout + out.stderr, "the API key leaked into output"
    if check:
        assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def deploy_json(cwd: Path, server: LocalServer, *extra: str) -> dict:
    out = run_cli(["deploy", "--json", *extra], cwd, server)
    return json.loads(out.stdout)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A real PNG of noise (incompressible, so its size is about width*height*3)."""
    import random

    rng = random.Random(seed)
    raw = b"".join(b"\0" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def site_get(server: LocalServer, project_id: str, path: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}/sites/{project_id}/{path.lstrip('/')}")


@pytest.fixture
def project_dir(tmp_path: Path, local_server: LocalServer) -> Path:
    run_cli(
        ["init", "site", "--template", "basic", "--name", "Deploy Test"], tmp_path, local_server
    )
    site = tmp_path / "site"
    run_cli(["link", "--create", "Deploy Test"], site, local_server)
    return site


def project_id_of(site: Path) -> str:
    import tomllib

    return tomllib.loads((site / "mosaic.toml").read_text())["app"]["project_id"]


def static_files(site: Path) -> list[Path]:
    return [p for p in (site / "public").rglob("*") if p.is_file()]


def test_first_deploy_redeploy_and_one_edit(project_dir: Path, local_server: LocalServer):
    pid = project_id_of(project_dir)
    first = deploy_json(project_dir, local_server)
    assert first["status"] == "ok"
    assert first["uploaded"] == len(static_files(project_dir))
    assert first["pruned"] == 0 and first["migrations_applied"] == 0
    assert first["url"].endswith(f".localhost:{local_server.port}")
    page = site_get(local_server, pid, "/")
    assert page.status_code == 200
    assert page.text == (project_dir / "public" / "index.html").read_text()

    again = deploy_json(project_dir, local_server)
    assert again["uploaded"] == 0 and again["unchanged"] == first["uploaded"]

    css = project_dir / "public" / "style.css"
    css.write_text(css.read_text() + "\n/* edited */\n")
    edit = deploy_json(project_dir, local_server)
    assert edit["uploaded"] == 1
    assert site_get(local_server, pid, "/style.css").text.endswith("/* edited */\n")

    (project_dir / "public" / "app.js").unlink()
    pruned = deploy_json(project_dir, local_server)
    assert pruned["pruned"] == 1 and pruned["uploaded"] == 0
    assert site_get(local_server, pid, "/app.js").status_code == 404


def test_png_font_and_secrets(project_dir: Path, local_server: LocalServer) -> None:
    pid = project_id_of(project_dir)
    public = project_dir / "public"
    big_png = png_bytes(1300, 1300)  # about 5 MB
    assert len(big_png) > 5_000_000
    (public / "photo.png").write_bytes(big_png)
    (public / "fonts").mkdir()
    font = os.urandom(40_000)
    (public / "fonts" / "brand.woff2").write_bytes(font)
    (public / "fonts.css").write_text(
        "@font-face{font-family:Brand;src:url('fonts/brand.woff2') format('woff2')}\n"
    )
    (public / ".env").write_text("SECRET_TOKEN=do-not-publish\n")
    (public / ".git").mkdir()
    (public / ".git" / "config").write_text("[core]\n")
    (public / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")

    result = deploy_json(project_dir, local_server)
    assert result["storage"] == ["fonts/brand.woff2"]
    assert ".env" in result["skipped"] and any(s.startswith(".git") for s in result["skipped"])

    assert site_get(local_server, pid, "/photo.png").content == big_png
    assets = site_get(local_server, pid, "/mosaic-assets.json").json()
    font_url = assets["fonts/brand.woff2"]
    assert httpx.get(font_url).content == font
    served_css = site_get(local_server, pid, "/fonts.css").text
    assert font_url in served_css and "url('fonts/brand.woff2')" not in served_css
    # The rewritten copy is what was served; the source on disk is untouched.
    assert "url('fonts/brand.woff2')" in (public / "fonts.css").read_text()

    # .env, .git and the key are nowhere on the platform.
    with MosaicClient(local_server.api, KEY_A) as client:
        names = {f["filename"] for f in client.list_files(pid)}
        names |= {f["filename"] for f in client.list_storage(pid)["files"]}
        rows = client.sql(pid, "SELECT path FROM mosaicsync.files")
    everywhere = names | {r["path"] for r in rows}
    assert not any(n.startswith((".env", ".git", "id_rsa")) for n in everywhere)
    assert site_get(local_server, pid, "/.env").status_code == 404
    again = deploy_json(project_dir, local_server)  # its routes and digest remembered
    assert again["uploaded"] == 0 and again["storage"] == ["fonts/brand.woff2"]
    assert (project_dir / ".mosaicsync" / "digest").exists()


def test_symlink_escape_is_refused(project_dir: Path, local_server: LocalServer) -> None:
    outside = project_dir.parent / "outside.txt"
    outside.write_text("secret")
    (project_dir / "public" / "leak.txt").symlink_to(outside)
    out = run_cli(["deploy"], project_dir, local_server, check=False)
    assert out.returncode == 2
    assert "leak.txt" in out.stderr


def test_the_project_s_error_comes_before_the_folder_s(
    project_dir: Path, local_server: LocalServer
) -> None:
    # The project is looked up while the folder is walked; when both are wrong, the project's
    # error is the one reported (as when it was looked up first), and nothing is sent.
    outside = project_dir.parent / "outside.txt"
    outside.write_text("secret")
    (project_dir / "public" / "leak.txt").symlink_to(outside)
    toml = project_dir / "mosaic.toml"
    toml.write_text(toml.read_text().replace(project_id_of(project_dir), "gone-zzz"))
    out = run_cli(["deploy"], project_dir, local_server, check=False)
    assert out.returncode == 4, out.stderr
    assert "gone-zzz" in out.stderr and "leak.txt" not in out.stderr
    (project_dir / "public" / "leak.txt").unlink()
    out = run_cli(["deploy"], project_dir, local_server, check=False)
    assert out.returncode == 4 and "gone-zzz" in out.stderr


def test_second_clone_without_cache_deploys_nothing(
    project_dir: Path, local_server: LocalServer
) -> None:
    deploy_json(project_dir, local_server)
    clone = project_dir.parent / "clone"
    shutil.copytree(project_dir, clone, ignore=shutil.ignore_patterns(".mosaicsync"))
    assert not (clone / ".mosaicsync").exists()
    assert deploy_json(clone, local_server)["uploaded"] == 0


def test_dry_run_and_status_change_nothing(project_dir: Path, local_server: LocalServer) -> None:
    plan = deploy_json(project_dir, local_server, "--dry-run")
    n = len(static_files(project_dir))
    assert plan["dry_run"] is True and len(plan["plan"]["upload"]) == n
    status = json.loads(run_cli(["status", "--json"], project_dir, local_server).stdout)
    assert len(status["plan"]["upload"]) == n
    assert deploy_json(project_dir, local_server)["uploaded"] == n


def test_killed_deploy_resumes_and_converges(project_dir: Path, local_server: LocalServer):
    pid = project_id_of(project_dir)
    public = project_dir / "public"
    for i in range(300):
        (public / f"page{i:03}.txt").write_text(f"page {i}\n" * 50)
    total = len(static_files(project_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=local_server.api, MOSAIC_API_KEY=KEY_A)
    with subprocess.Popen(
        [sys.executable, "-m", "mosaicsync", "deploy", "--verbose", "--concurrency", "2"],
        cwd=project_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    ) as proc:  # fmt: skip
        uploads = 0
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.strip().startswith("upload "):
                uploads += 1
                if uploads >= 220:
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert uploads >= 220, "the deploy finished before it could be killed"
    resumed = deploy_json(project_dir, local_server)
    # Rows are written in batches as files arrive: at most one batch is sent again.
    assert 0 < resumed["uploaded"] < total
    assert deploy_json(project_dir, local_server)["uploaded"] == 0
    with MosaicClient(local_server.api, KEY_A) as client:
        deployed = {f["filename"] for f in client.list_files(pid)}
    assert deployed == {p.relative_to(public).as_posix() for p in static_files(project_dir)}


def test_no_project_linked_is_a_config_error(tmp_path: Path, local_server: LocalServer) -> None:
    run_cli(["init", "bare"], tmp_path, local_server)
    out = run_cli(["deploy", "--json"], tmp_path / "bare", local_server, check=False)
    assert out.returncode == 2
    body = json.loads(out.stdout)
    assert body["status"] == "error" and "link" in body["error"]["hint"]


def test_deploy_applies_migrations_first_and_stops_on_failure(
    tmp_path: Path, local_server: LocalServer
) -> None:
    run_cli(["init", "todo", "--template", "todo"], tmp_path, local_server)
    site = tmp_path / "todo"
    run_cli(["link", "--create", "Todo"], site, local_server)
    pid = project_id_of(site)
    first = deploy_json(site, local_server)
    assert first["migrations_applied"] == 1 and first["uploaded"] > 0
    with MosaicClient(local_server.api, KEY_A) as client:
        assert client.sql(pid, "SELECT count(*) AS n FROM todos") == [{"n": 0}]

    # A broken migration: the deploy fails before any file is uploaded.
    (site / "migrations" / "0002_broken.sql").write_text(
        "CREATE TABLE tags (id int);\n\nSELECT * FROM missing_table;\n"
    )
    (site / "public" / "new.html").write_text("<p>new</p>")
    out = run_cli(["deploy", "--json"], site, local_server, check=False)
    assert out.returncode == 7
    error = json.loads(out.stdout)["error"]
    assert "0002_broken.sql:3:" in error["error"] and "42P01" in error["error"]
    assert site_get(local_server, pid, "/new.html").status_code == 404
    with MosaicClient(local_server.api, KEY_A) as client:
        tables = client.sql(pid, "SELECT to_regclass('public.tags') IS NULL AS gone")
    assert tables == [{"gone": True}]

    # Fixed: the migration and the page go out together.
    (site / "migrations" / "0002_broken.sql").write_text("CREATE TABLE tags (id int);\n")
    fixed = deploy_json(site, local_server)
    assert fixed["migrations_applied"] == 1 and fixed["uploaded"] == 1
    assert deploy_json(site, local_server, "--no-migrate")["uploaded"] == 0


def test_rewritten_files_are_not_uploaded_again_for_an_unrelated_edit(
    project_dir: Path, local_server: LocalServer
) -> None:
    public = project_dir / "public"
    (public / "fonts").mkdir()
    (public / "fonts" / "a.woff2").write_bytes(os.urandom(5000))
    for i in range(5):
        (public / f"theme{i}.css").write_text(f"@font-face{{src:url(fonts/a.woff2)}} .c{i}{{}}\n")
    deploy_json(project_dir, local_server)
    (public / "app.js").write_text("console.log('edited')\n")
    assert deploy_json(project_dir, local_server)["uploaded"] == 1


def _deploy_in_process(site: Path, server: LocalServer, before_take=None) -> tuple[dict, list]:
    """One deploy run here, its SQL requests recorded; `before_take()` runs once, just before
    the deploy's take of the lease is sent."""
    from mosaicsync.config import load_config
    from mosaicsync.deploy import Deployer, DeployOptions

    sent: list[str] = []
    with MosaicClient(server.api, KEY_A) as client:
        original = client.sql

        def recorded(project: str, query: str, **kw: object) -> list[dict]:
            if (
                before_take is not None
                and query.startswith("WITH taken AS")
                and not any(q.startswith("WITH taken AS") for q in sent)
            ):
                before_take()
            sent.append(query)
            return original(project, query, **kw)  # type: ignore[arg-type]

        client.sql = recorded  # type: ignore[method-assign]
        config = load_config(site / "mosaic.toml")
        result = Deployer(config, client, project_id_of(site), DeployOptions()).run()
    return result.to_json(), sent


def test_an_edit_trusts_the_copy_on_the_digest_read_before_the_lease_while_nobody_took_it(
    project_dir: Path, local_server: LocalServer
) -> None:
    from mosaicsync.manifest import FULL_DIGEST_SQL, Manifest
    from mosaicsync.migrate import Migrator

    pid = project_id_of(project_dir)
    public = project_dir / "public"
    deploy_json(project_dir, local_server)
    (public / "app.js").write_text("console.log('one')\n")
    result, sent = _deploy_in_process(project_dir, local_server)
    # The digest of every row came with the no-op check, and the take's fence was the next one:
    # no request of its own for it, and the plan is the copy's.
    assert result["uploaded"] == 1
    assert FULL_DIGEST_SQL not in sent
    assert any(FULL_DIGEST_SQL in q for q in sent[:1])

    # Another deploy's take and write between that read and this deploy's take: the copy is
    # checked again, found stale, and the rows are read from the platform.
    def another_writer() -> None:
        with (
            MosaicClient(local_server.api, KEY_A) as other,
            Migrator(other, pid, project_dir / "migrations").lease(),
        ):
            Manifest(other, pid).remove(["logo.png"])

    (public / "app.js").write_text("console.log('two')\n")
    result, sent = _deploy_in_process(project_dir, local_server, before_take=another_writer)
    assert FULL_DIGEST_SQL in sent
    assert result["uploaded"] == 2  # app.js, and logo.png, which the platform no longer listed
    assert site_get(local_server, pid, "/logo.png").content == (public / "logo.png").read_bytes()
    assert deploy_json(project_dir, local_server)["uploaded"] == 0

    # No lease table (dropped by hand): the read before the lease cannot name it, and the
    # deploy goes on without it.
    with MosaicClient(local_server.api, KEY_A) as client:
        client.sql(pid, "DROP TABLE mosaicsync.lock")
    (public / "app.js").write_text("console.log('three')\n")
    assert deploy_json(project_dir, local_server)["uploaded"] == 1
    assert site_get(local_server, pid, "/app.js").text == "console.log('three')\n"


def test_an_edit_of_one_file_is_sent_without_a_pool_of_threads(
    project_dir: Path, local_server: LocalServer
) -> None:
    """The common edit: one upload, sent from the command's own thread, so neither the pool
    nor what it needs (concurrent.futures and its logging, ctypes for the arenas) is loaded."""
    deploy_json(project_dir, local_server)
    (project_dir / "public" / "app.js").write_text("console.log('one')\n")
    code = (
        "import sys\n"
        "from mosaicsync.__main__ import run\n"
        "sys.argv = ['mosaicsync', 'deploy', '--json']\n"
        "try:\n"
        "    run()\n"
        "finally:\n"
        "    loaded = [m for m in ('concurrent.futures', 'ctypes') if m in sys.modules]\n"
        "    sys.stderr.write('\\nLOADED ' + ','.join(loaded) + '\\n')\n"
    )
    out = python_against(code, project_dir, local_server)
    assert json.loads(out.stdout)["uploaded"] == 1
    assert out.stderr.rpartition("LOADED ")[2].strip() == ""


def test_unchanged_css_is_rewritten_when_a_file_it_uses_goes_to_storage(
    project_dir: Path, local_server: LocalServer
) -> None:
    pid = project_id_of(project_dir)
    public = project_dir / "public"
    (public / "fonts.css").write_text("@font-face{src:url('fonts/late.woff2')}\n")
    deploy_json(project_dir, local_server)
    assert "fonts/late.woff2" in site_get(local_server, pid, "/fonts.css").text
    (public / "fonts").mkdir()
    (public / "fonts" / "late.woff2").write_bytes(os.urandom(3000))
    result = deploy_json(project_dir, local_server)
    assert result["storage"] == ["fonts/late.woff2"]
    url = site_get(local_server, pid, "/mosaic-assets.json").json()["fonts/late.woff2"]
    assert url in site_get(local_server, pid, "/fonts.css").text
    # An unrelated edit afterwards uploads one file: the map did not change.
    (public / "app.js").write_text("console.log(1)\n")
    assert deploy_json(project_dir, local_server)["uploaded"] == 1


def test_the_local_manifest_copy_is_used_only_while_the_platform_agrees(
    project_dir: Path, local_server: LocalServer
) -> None:
    from mosaicsync.manifest import (
        FULL_DIGEST_SQL,
        Manifest,
        ManifestRow,
        load_copy,
        rows_digest,
        save_copy,
    )

    pid = project_id_of(project_dir)
    copy = project_dir / ".mosaicsync" / "manifest"
    deploy_json(project_dir, local_server)
    held = load_copy(copy)
    assert held is not None
    client = MosaicClient(local_server.api, KEY_A)
    try:
        manifest = Manifest(client, pid)
        _, server_rows = manifest.fetch()
        # Every column, a NULL, a rewritten page and the generated assets map: the same digest
        # on both sides, so the copy is used after the deploy that wrote it.
        assert held[1] == server_rows
        assert held[0] == rows_digest(server_rows.values())
        odd = ManifestRow("dir/é ü.txt", "a" * 64, 0, "site", None, "b" * 64, True)
        # A path given twice in one write (a storage row, then the same with its URL) is
        # written once, as last given.
        manifest.upsert([odd._replace(size=1), odd])
        _, server_rows = manifest.fetch()
        assert server_rows[odd.path] == odd
        assert client.sql(pid, FULL_DIGEST_SQL)[0]["digest"] == rows_digest(server_rows.values())
        manifest.remove([odd.path])

        requests: list[str] = []
        original = client.sql

        def counted(project: str, query: str, **kw: object) -> list[dict]:
            requests.append(query)
            return original(project, query, **kw)  # type: ignore[arg-type]

        client.sql = counted  # type: ignore[method-assign]
        deploy_json(project_dir, local_server)  # a no-op writes nothing
        _, rows = manifest.fetch(copy)
        assert len(requests) == 1 and requests[0] == FULL_DIGEST_SQL  # no row was downloaded
        assert rows == manifest.fetch()[1]

        # A copy that no longer matches (a deploy from another folder, a hand edit): read from
        # the platform, and the next deploy plans against what is really there.
        css = project_dir / "public" / "style.css"
        other = project_dir.parent / "other"
        shutil.copytree(project_dir, other, ignore=shutil.ignore_patterns(".mosaicsync"))
        (other / "public" / "style.css").write_text("body { color: red }\n")
        assert deploy_json(other, local_server)["uploaded"] == 1
        requests.clear()
        _, rows = manifest.fetch(copy)
        assert any(q.startswith("SELECT path, sha256") for q in requests)
        assert rows["style.css"].sha256 != held[1]["style.css"].sha256
        edit = deploy_json(project_dir, local_server)
        assert edit["uploaded"] == 1  # this folder's style.css, back over the other one
        assert site_get(local_server, pid, "/style.css").text == css.read_text()

        tampered = {**held[1], "app.js": ManifestRow("app.js", "0" * 64, 1, "site")}
        save_copy(copy, tampered)
        (project_dir / "public" / "app.js").write_text("console.log('changed')\n")
        assert deploy_json(project_dir, local_server)["uploaded"] == 1
        assert site_get(local_server, pid, "/app.js").text == "console.log('changed')\n"
    finally:
        client.close()
