"""`dev`: the local platform as a child process, this folder's project on it, and `watch` with
live reload, stopped with a clear error if the platform dies. After the first deploy it applies
the seed data ([migrations] seed) the local project has not recorded yet, so a restart of `dev`
does not seed twice.

A child process, not a thread: the platform gets its own interpreter (serving pages never waits
on the watcher's hashing), and it is the very `mosaicsync local` that the tests exercise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mosaicsync.api import MosaicClient
from mosaicsync.config import Config, load_config, set_project_id
from mosaicsync.errors import LocalPlatformError, MosaicError, NotFoundError
from mosaicsync.events import Deployed, DevStarted, MigrationsApplied, Seeded, WatchWarning
from mosaicsync.migrate import Migrator
from mosaicsync.watch import Watcher, WatchOptions


def local_project(client: MosaicClient, config: Config) -> str:
    """This folder's project on the local platform: the one in [targets.local], else a new one."""
    known = config.targets.get("local")
    if known is not None and known.project_id:
        try:
            client.get_project(known.project_id)
            return known.project_id
        except NotFoundError:
            pass  # made on another data dir, or deleted: make a new one
    project = client.create_project(config.name)
    client.wait_until_running(project["project_id"])
    return project["project_id"]


def seed_local(
    client: MosaicClient, project_id: str, config: Config, emit: Callable[[object], None]
) -> None:
    """Apply the seed files `project_id` has not recorded; a failure is a warning, not the end
    of `dev` (the file left nothing, and the next start of `dev` tries it again)."""
    if config.seed is None:
        return
    from mosaicsync.seed import Seeder

    try:
        result = Seeder(client, project_id, config).run()
    except MosaicError as exc:
        emit(WatchWarning("seed", exc.message, exc.hint))
        return
    emit(Seeded([(a.name, a.ms) for a in result.applied], result.warnings))


class Dev:
    """Runs `mosaicsync local --dev` as a child and watches this folder into it until stopped."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        port: int,
        options: WatchOptions,
        *,
        on_event: Callable[[object], None],
        on_request: Callable[[Any], None] | None = None,
        on_secret: Callable[[str], None] = lambda secret: None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.port = port
        self.options = options
        self.on_event = on_event
        self.on_request = on_request
        self.on_secret = on_secret
        self.watcher: Watcher | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._died: int | None = None

    def run(self) -> None:
        from mosaicsync.local.process import LocalProcess, LocalProcessError

        platform = LocalProcess(self.data_dir, args=["--dev"], listen_port=self.port)
        try:
            platform.start()
        except LocalProcessError as exc:
            errors = [line for line in str(exc).splitlines() if line.startswith("Error:")]
            raise LocalPlatformError(
                errors[-1].removeprefix("Error: ") if errors else str(exc),
                hint=f"see {platform.log_path}; another port: --port 0",
            ) from None
        assert platform.proc is not None
        guard = threading.Thread(
            target=self._guard, args=(platform.proc,), name="mosaicsync-dev-guard", daemon=True
        )
        guard.start()
        try:
            self._watch(platform)
        except MosaicError:
            if self._died is None:
                raise
        finally:
            with self._lock:
                self._stopping = True
            platform.stop()
            guard.join()
        if self._died is not None:
            raise LocalPlatformError(
                f"the local platform stopped unexpectedly (exit code {self._died}), so dev "
                "cannot go on",
                hint=f"its log says why: {platform.log_path}; then run `mosaicsync dev` again",
            )

    def _guard(self, proc: Any) -> None:
        """Wait for the platform child; if it exits while dev still needs it, stop the watch."""
        code = proc.wait()
        with self._lock:
            if self._stopping:
                return
            self._died = code
            watcher = self.watcher
        if watcher is not None:
            watcher.stop()

    def _watch(self, platform: Any) -> None:
        try:
            key = (self.data_dir / "api-key").read_text().strip()
        except OSError as exc:
            raise LocalPlatformError(
                f"cannot read the local platform's API key in {self.data_dir}: {exc.strerror}",
                hint="pass another --data directory",
            ) from None
        self.on_secret(key)
        config = self.config
        with MosaicClient(platform.api_url, key, on_request=self.on_request) as client:
            project_id = local_project(client, config)
            target = config.targets.get("local")
            if target is None or target.project_id != project_id:
                set_project_id(config.path, project_id, target="local")
                config = load_config(config.path)
            url = client.get_project(project_id)["url"] + "/"
            self.on_event(
                DevStarted(
                    platform.base_url,
                    platform.api_url,
                    self.data_dir,
                    project_id,
                    url,
                    f"{platform.base_url}/sites/{project_id}/",
                    config.path.name,
                )
            )
            seeded = False

            def on_event(event: object) -> None:
                nonlocal seeded
                self.on_event(event)
                if seeded or not isinstance(event, Deployed | MigrationsApplied):
                    return
                # Once per run, when the schema is there: the watch applies migrations in a
                # flush of their own, which may come after its first deploy.
                if (
                    config.seed is not None
                    and Migrator(client, project_id, config.migrations_dir).status().pending
                ):
                    return
                seeded = True
                seed_local(client, project_id, config, self.on_event)

            watcher = Watcher(config, client, project_id, self.options, on_event)
            with self._lock:
                if self._died is not None:
                    return
                self.watcher = watcher
            watcher.run()
