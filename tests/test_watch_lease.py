"""`watch` and `deploy` share one lease: a sync waits for a deploy (and a deploy for a sync), and
a sync after a deploy plans against what the deploy left, never against a stale copy."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.migrate import Migrator
from tests.conftest import LocalServer
from tests.test_watch import PAGE, Run, cli_env, make_site, served, site_get, wait_until


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[MosaicClient]:
    from tests.conftest import KEY_A

    with MosaicClient(local_server.api, KEY_A) as c:
        yield c


@pytest.mark.integration
def test_a_sync_waits_for_the_deploy_lease_and_never_interleaves(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> None:
    site = tmp_path / "site"
    pid = make_site(site, client)
    run = Run(["watch"], site, cli_env(local_server))
    try:
        run.wait_for("watching")
        holder = Migrator(client, pid, site / "migrations", lock_timeout=10)
        with holder.lease():  # what a deploy holds from its migrations to its last prune
            (site / "public" / "index.html").write_text(PAGE.format(marker="during"))
            waiting = run.wait_for("waiting")
            assert waiting["pid"] and waiting["host"]
            # The save is seen, but nothing reaches the site while the lease is held.
            assert served(local_server, pid, "index.html", PAGE.format(marker="v1"))
            assert not run.of("sync")
        wait_until(lambda: served(local_server, pid, "index.html", PAGE.format(marker="during")))
        assert run.wait_for("sync")["paths"] == ["index.html"]
    finally:
        run.stop()


@pytest.mark.integration
def test_a_sync_after_a_deploy_from_elsewhere_plans_against_what_it_left(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> None:
    here = tmp_path / "here"
    pid = make_site(here, client)
    run = Run(["watch"], here, cli_env(local_server))
    try:
        run.wait_for("watching")
        # A teammate (or CI) deploys another version of the page from another folder.
        there = tmp_path / "there"
        shutil.copytree(here, there, ignore=shutil.ignore_patterns(".mosaicsync"))
        (there / "public" / "index.html").write_text(PAGE.format(marker="theirs"))
        deploy = Run(["deploy"], there, cli_env(local_server))
        deploy.proc.wait(timeout=60)
        deploy.stop()
        assert deploy.proc.returncode == 0, deploy.log.read_text()
        assert served(local_server, pid, "index.html", PAGE.format(marker="theirs"))
        # Saving this folder's page unchanged must put it back: the watch's copy of the
        # manifest still says v1 is deployed, which is no longer true.
        (here / "public" / "index.html").write_text(PAGE.format(marker="v1"))
        wait_until(lambda: served(local_server, pid, "index.html", PAGE.format(marker="v1")))
        rows = {r["path"]: r["sha256"] for r in client.sql(pid, "SELECT * FROM mosaicsync.files")}
        assert site_get(local_server, pid, "index.html").status_code == 200
        assert len(rows) == 4
    finally:
        run.stop()


def test_a_watch_leaves_the_client_it_was_given_as_it_was(tmp_path: Path) -> None:
    from mosaicsync.config import load_config, render_config
    from mosaicsync.watch import WATCH_RETRY, Watcher

    (tmp_path / "public").mkdir()
    (tmp_path / "mosaic.toml").write_text(render_config("Mine", project_id="pod-abc"))
    with MosaicClient("http://127.0.0.1:9/v1/project", "mk_test_unused") as given:
        policy, sleep = given.retry, given.sleep
        watcher = Watcher(load_config(tmp_path / "mosaic.toml"), given, "pod-abc")
        assert (given.retry, given.sleep) == (policy, sleep)
        assert watcher.client.retry == WATCH_RETRY and watcher.client.http is given.http


@pytest.mark.integration
def test_a_deploy_started_while_a_watch_holds_the_lease_waits_and_both_end_true(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> None:
    import os
    import queue
    import threading

    from mosaicsync.config import load_config
    from mosaicsync.deploy import Deployer, DeployOptions
    from mosaicsync.events import LockWaiting, Synced, Watching
    from mosaicsync.watch import Watcher, WatchOptions

    site = tmp_path / "site"
    pid = make_site(site, client)
    config = load_config(site / "mosaic.toml")
    seen: queue.Queue = queue.Queue()

    def next_of(kind: type, timeout: float = 30) -> object:
        while True:
            event = seen.get(timeout=timeout)
            if isinstance(event, kind):
                return event

    # The watch keeps the lease for a minute after a sync: the deploy below must wait for it.
    options = WatchOptions(lease_linger=60)
    watcher = Watcher(config, client, pid, options, on_event=seen.put)
    watching = threading.Thread(target=watcher.run)
    watching.start()
    deploy_events: queue.Queue = queue.Queue()
    deploying: threading.Thread | None = None
    try:
        next_of(Watching)
        (site / "public" / "index.html").write_text(PAGE.format(marker="watched"))
        assert next_of(Synced).paths == ["index.html"]  # type: ignore[attr-defined]
        (lock,) = client.sql(pid, "SELECT host, pid FROM mosaicsync.lock WHERE expires_at > now()")
        assert lock["pid"] == os.getpid()

        (site / "public" / "app.js").write_text("console.log('deployed');\n")
        deployer = Deployer(
            config, client, pid, DeployOptions(lock_timeout=60), on_event=deploy_events.put
        )
        results: list[object] = []
        deploying = threading.Thread(target=lambda: results.append(deployer.run()))
        deploying.start()
        while not isinstance(deploy_events.get(timeout=30), LockWaiting):
            pass
        # Still waiting while the watch holds the lease. (The watch sees the save of app.js
        # too and may send it meanwhile: what is served now is not the point.)
        assert not results
    finally:
        watcher.stop()
        watching.join(timeout=30)
        # Joined before the fixture closes the client, whatever failed above.
        if deploying is not None:
            deploying.join(timeout=60)
    # The watch sees the save of app.js too and may sync it before it is stopped: which of the
    # two sends it is a race, so what is checked is that the deploy ended and the site is true.
    assert results, "the deploy never finished"
    on_disk = {p.name: p.read_text() for p in (site / "public").glob("*.*")}
    for name, text in on_disk.items():
        assert served(local_server, pid, name, text), name
