"""The benchmark harness: every scenario as a ratio to a baseline measured in the same run.

It starts a local platform (and a latency proxy in front of it), generates synthetic sites in a
temporary directory, runs each scenario and its baseline interleaved (so drift in a shared
machine's load hits both alike), takes the median of several runs and writes Markdown, JSON and
an SVG chart to bench/results/. Everything it starts it stops, and the temporary data goes too.

    python -m bench.run            # full: 1k, 10k and 100k files, a 1 GiB object
    python -m bench.run --quick    # CI-sized: under ~3 minutes
    python -m bench.run --profile  # also sample the client and the platform with py-spy
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.sites import generate_site, touch_one
from mosaicsync.api import MosaicClient
from mosaicsync.config import render_config
from mosaicsync.events import RequestEvent
from mosaicsync.ignore import load_ignore_rules
from mosaicsync.local.process import LocalProcess, platform_tempdir
from mosaicsync.scan import scan

KEY = "mk_bench_harness_key"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
DELAY = 0.025  # seconds the proxy adds each way: a 50 ms round trip


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is in a mode."""

    sites: tuple[int, ...]
    small_files: int
    proxy_files: int
    big_file: int
    migrations: int
    capacity_requests: int
    runs: int


# Peak RSS of a cold deploy of the mixed site, by number of files.
RSS_BUDGET_MB = {10_000: 80, 100_000: 150}

QUICK = Sizes((1_000, 10_000), 600, 150, 256 * 1024**2, 200, 1_500, 5)
FULL = Sizes((1_000, 10_000, 100_000), 2_000, 2_000, 1024**3, 200, 6_000, 5)


@dataclass
class ProcRun:
    """One child process: wall time and its own resource usage (from wait4)."""

    wall: float
    user: float
    sys: float
    maxrss_kb: int
    code: int
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def json(self) -> dict[str, Any]:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return {}


@dataclass
class Scenario:
    """One row of the results: a measured value, its baseline, the ratio and the target."""

    name: str
    measured: str  # what was timed, in words
    baseline_name: str
    value: float
    baseline: float
    unit: str
    ratio: float
    op: str  # "<=" or ">="
    bound: float
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.ratio <= self.bound if self.op == "<=" else self.ratio >= self.bound


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_child(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> ProcRun:
    """Run a command to completion; its rusage comes from wait4, so it is its own, not ours."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcRun(
            wall,
            usage.ru_utime,
            usage.ru_stime,
            usage.ru_maxrss,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds a live process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """Owns the platform, the proxy, the temp dir, and the scenarios' shared state."""

    def __init__(self, tmp: Path, sizes: Sizes, *, profile: bool, fast_db: bool) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.profile = profile
        self.fast_db = fast_db
        self.platform: LocalProcess | None = None
        self.proxy: subprocess.Popen[str] | None = None
        self.proxy_api = ""
        self.client: MosaicClient | None = None
        self.scenarios: list[Scenario] = []
        self.info: dict[str, Any] = {}
        self.profiles: dict[str, str] = {}
        self.env: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
        if self.fast_db:
            env["MOSAIC_LOCAL_FAST_DB"] = "1"
        self.platform = LocalProcess(
            self.tmp / "platform",
            ["--api-key", KEY, "--rate-limit", "0", "--projects-per-account", "0"],
            env=env,
        )
        started = time.perf_counter()
        self.platform.start(timeout=180)
        log(f"platform up at {self.platform.base_url} in {time.perf_counter() - started:.1f} s")
        self.client = MosaicClient(self.platform.api_url, KEY)
        self.proxy = subprocess.Popen(
            [
                PY,
                "-m",
                "bench.proxy",
                "--target",
                f"127.0.0.1:{self.platform.port}",
                "--delay",
                str(DELAY),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        match = re.match(r"Listening on (\d+)", line)
        if not match:
            raise RuntimeError(f"the proxy did not start: {line!r}")
        self.proxy_api = f"http://127.0.0.1:{match.group(1)}/v1/project"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
        # An installed tool runs from cached bytecode; a sandbox that turns the cache off would
        # charge every command ~40 ms of compiling. The cache lives in our temp dir.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env.update(
            PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"),
            MOSAIC_API_KEY=KEY,
            XDG_CONFIG_HOME=str(self.tmp / "xdg-config"),
            XDG_DATA_HOME=str(self.tmp / "xdg-data"),
            XDG_CACHE_HOME=str(self.tmp / "xdg-cache"),
            PYTHONPATH=str(ROOT),
        )

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proxy is not None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
            if self.proxy.stdout:
                self.proxy.stdout.close()
            self.proxy = None
        if self.platform is not None:
            self.platform.stop()
            self.platform = None

    @property
    def api(self) -> str:
        assert self.platform is not None
        return self.platform.api_url

    # -- helpers --------------------------------------------------------------------------------

    def new_project(self, name: str) -> str:
        assert self.client is not None
        project_id = self.client.create_project(name)["project_id"]
        self.client.wait_until_running(project_id)
        return project_id

    def drop_project(self, project_id: str) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            self.client.delete_project(project_id)

    def project_dir(self, name: str, project_id: str, *, keep: int | None = None) -> Path:
        """A folder with a mosaic.toml linked to `project_id`; the site goes in its public/.
        `keep` sets `[history] keep` (None: the default)."""
        folder = self.tmp / "projects" / name
        folder.mkdir(parents=True, exist_ok=True)
        self.link(folder, project_id, keep=keep)
        return folder

    def link(self, folder: Path, project_id: str, *, keep: int | None = None) -> None:
        text = render_config(folder.name, project_id=project_id)
        if keep is not None:
            text += f"\n[history]\nkeep = {keep}\n"
        (folder / "mosaic.toml").write_text(text)

    def deploy(self, folder: Path, api: str | None = None, *extra: str) -> ProcRun:
        env = {**self.env, "MOSAIC_API_URL": api or self.api}
        run = run_child([PY, "-m", "mosaicsync", "deploy", "--json", *extra], cwd=folder, env=env)
        if run.code != 0:
            raise RuntimeError(f"deploy failed ({run.code}): {run.stdout}\n{run.stderr[-2000:]}")
        return run

    def rollback(self, folder: Path, *extra: str) -> ProcRun:
        env = {**self.env, "MOSAIC_API_URL": self.api}
        run = run_child(
            [PY, "-m", "mosaicsync", "rollback", "--yes", "--json", *extra], cwd=folder, env=env
        )
        if run.code != 0:
            raise RuntimeError(f"rollback failed ({run.code}): {run.stdout}\n{run.stderr[-2000:]}")
        return run

    def naive(self, root: Path, project_id: str, api: str | None = None) -> ProcRun:
        run = run_child(
            [
                PY,
                "-m",
                "bench.naive",
                "--api-url",
                api or self.api,
                "--project",
                project_id,
                str(root),
            ],
            cwd=ROOT,
            env=self.env,
        )
        if run.code != 0:
            raise RuntimeError(f"naive upload failed: {run.stderr[-2000:]}")
        return run

    def add(self, scenario: Scenario) -> None:
        self.scenarios.append(scenario)
        mark = "pass" if scenario.passed else "MISS"
        if scenario.bound == float("inf"):
            mark = "(no target)"
        log(
            f"{scenario.name}: {scenario.ratio:.2f}x (target {scenario.op} {scenario.bound:g}x) "
            f"{mark}"
        )

    @contextlib.contextmanager
    def sample_server(self, name: str) -> Iterator[None]:
        """py-spy on the platform process while the block runs (with --profile)."""
        if not self.profile or self.platform is None or self.platform.proc is None:
            yield
            return
        out = self.tmp / f"server-{name}.txt"
        spy = subprocess.Popen(
            [
                str(Path(PY).parent / "py-spy"),
                "record",
                "--gil",
                "--pid",
                str(self.platform.proc.pid),
                "--format",
                "raw",
                "--rate",
                "1000",
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            if out.exists():
                self.profiles[f"server: {name}"] = out.read_text()

    def sample_client(self, name: str, folder: Path, api: str | None = None) -> None:
        """One more deploy of `folder` under py-spy (with --profile); not part of the timings."""
        if not self.profile:
            return
        out = self.tmp / f"client-{name}.txt"
        env = {**self.env, "MOSAIC_API_URL": api or self.api}
        run_child(
            [
                str(Path(PY).parent / "py-spy"),
                "record",
                "--gil",
                "--format",
                "raw",
                "--rate",
                "1000",
                "--subprocesses",
                "-o",
                str(out),
                "--",
                PY,
                "-m",
                "mosaicsync",
                "deploy",
                "--json",
            ],
            cwd=folder,
            env=env,
        )
        if out.exists():
            self.profiles[f"client: {name}"] = out.read_text()

    # -- scenarios ------------------------------------------------------------------------------

    def loadgen(self, project_id: str, concurrency: int) -> ProcRun:
        """One run of the load generator, as a child so it never shares our GIL."""
        assert self.platform is not None
        return run_child(
            [PY, "-m", "bench.loadgen", "--url", self.platform.base_url, "--key", KEY,
             "--project", project_id, "-c", str(concurrency),
             "-n", str(self.sizes.capacity_requests)],
            cwd=ROOT, env=self.env,
        )  # fmt: skip

    def capacity(self) -> dict[int, dict[str, Any]]:
        """Uploads per second the platform sustains, with the server's CPU per request."""
        assert self.platform is not None and self.platform.proc is not None
        project_id = self.new_project("capacity")
        levels: dict[int, dict[str, Any]] = {}
        try:
            for concurrency in (1, 8, 32):
                runs = []
                for _ in range(3):
                    before = proc_cpu(self.platform.proc.pid)
                    child = self.loadgen(project_id, concurrency)
                    server_cpu = proc_cpu(self.platform.proc.pid) - before
                    result = child.json()
                    if not result or result["errors"]:
                        raise RuntimeError(f"load generator failed: {child.stdout} {child.stderr}")
                    result["server_cpu_ms_per_request"] = server_cpu / result["requests"] * 1000
                    result["generator_cpu_ms_per_request"] = (
                        result["generator_cpu_s"] / result["requests"] * 1000
                    )
                    runs.append(result)
                best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
                levels[concurrency] = best
                log(
                    f"capacity c={concurrency}: {best['rps']:.0f} uploads/s, p50 "
                    f"{best['p50_ms']:.1f} ms, server {best['server_cpu_ms_per_request']:.2f} "
                    f"ms CPU/req, generator {best['generator_cpu_ms_per_request']:.2f} ms CPU/req"
                )
            if self.profile:
                with self.sample_server("load generator, concurrency 8"):
                    self.loadgen(project_id, 8)
        finally:
            self.drop_project(project_id)
        self.info["capacity"] = levels
        return levels

    def cold_small(self, capacity: dict[int, dict[str, Any]]) -> None:
        """Cold deploys of small files against the naive loop, on loopback and through latency."""
        sizes = self.sizes
        source = self.tmp / "small-src"
        generate_site(source, sizes.small_files, profile="small", seed=7)
        folder = self.project_dir("small", "pod-000")
        shutil.copytree(source, folder / "public")
        per_file_cpu: list[float] = []
        deploy_s: list[float] = []
        naive_s: list[float] = []
        for i in range(sizes.runs + 1):
            for kind in ("deploy", "naive") if i % 2 == 0 else ("naive", "deploy"):
                project_id = self.new_project(f"small-{kind}-{i}")
                try:
                    if kind == "deploy":
                        shutil.rmtree(folder / ".mosaicsync", ignore_errors=True)
                        self.link(folder, project_id)
                        run = self.deploy(folder)
                        if i > 0:  # the first pair warms caches and is dropped
                            deploy_s.append(run.wall)
                            per_file_cpu.append(run.cpu / run.json()["uploaded"])
                    else:
                        run = self.naive(folder / "public", project_id)
                        if i > 0:
                            naive_s.append(run.wall)
                finally:
                    self.drop_project(project_id)
        n = sizes.small_files
        deploy_rate = n / median(deploy_s)
        self.add(
            Scenario(
                "cold deploy, loopback",
                f"deploy {n} small files (CLI, cold)",
                "naive loop (one POST /files at a time)",
                median(deploy_s),
                median(naive_s),
                "s",
                median(naive_s) / median(deploy_s),
                "<=",
                float("inf"),
                deploy_s,
                naive_s,
                note="no target: on two shared cores the platform's capacity is the bar",
                extra={"files": n, "client_cpu_ms_per_file": median(per_file_cpu) * 1000},
            )
        )
        cpu_ms = median(per_file_cpu) * 1000
        self.add(
            Scenario(
                "client CPU per small file, loopback",
                f"user+sys of the cold deploy of {n} small files, per file",
                "budget of 0.35 ms per file",
                cpu_ms,
                0.35,
                "ms",
                cpu_ms / 0.35,
                "<=",
                1.0,
                [c * 1000 for c in per_file_cpu],
            )
        )
        cap = capacity[8]["rps"]
        self.add(
            Scenario(
                "cold deploy vs platform capacity",
                f"files/s of the cold deploy of {n} small files",
                "platform capacity at concurrency 8 (load generator)",
                deploy_rate,
                cap,
                "files/s",
                deploy_rate / cap,
                ">=",
                0.8,
                extra={
                    "capacity_c32": capacity[32]["rps"],
                    "vs_c32": deploy_rate / capacity[32]["rps"],
                },
            )
        )
        self.info["client_cpu_ms_per_file"] = median(per_file_cpu) * 1000
        if self.profile:  # an extra deploy, outside the timings, sampled on both sides
            project_id = self.new_project("small-profile")
            try:
                self.link(folder, project_id)
                shutil.rmtree(folder / ".mosaicsync", ignore_errors=True)
                with self.sample_server("cold deploy of small files, loopback"):
                    self.sample_client("cold deploy of small files, loopback", folder)
            finally:
                self.drop_project(project_id)

        # Through the proxy: a 50 ms round trip per request, as on a real link.
        m = sizes.proxy_files
        proxy_src = self.tmp / "proxy-src"
        proxy_src.mkdir()
        for path in sorted(p for p in source.rglob("*") if p.is_file())[:m]:
            target = proxy_src / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        pfolder = self.project_dir("proxied", "pod-000")
        shutil.copytree(proxy_src, pfolder / "public")
        results: dict[str, list[float]] = {"deploy": [], "deploy32": [], "naive": []}
        runs = sizes.runs
        for i in range(runs):
            order = (
                ["deploy", "naive", "deploy32"] if i % 2 == 0 else ["naive", "deploy32", "deploy"]
            )
            for kind in order:
                project_id = self.new_project(f"proxy-{kind}-{i}")
                try:
                    if kind == "naive":
                        results[kind].append(
                            self.naive(pfolder / "public", project_id, self.proxy_api).wall
                        )
                    else:
                        shutil.rmtree(pfolder / ".mosaicsync", ignore_errors=True)
                        self.link(pfolder, project_id)
                        extra = ("--concurrency", "32") if kind == "deploy32" else ()
                        results[kind].append(self.deploy(pfolder, self.proxy_api, *extra).wall)
                finally:
                    self.drop_project(project_id)
            log(
                f"proxy run {i + 1}/{runs}: "
                + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items())
            )
        self.add(
            Scenario(
                "cold deploy, 50 ms RTT",
                f"deploy {m} small files through the proxy (default, automatic --concurrency)",
                "naive loop through the proxy",
                median(results["deploy"]),
                median(results["naive"]),
                "s",
                median(results["naive"]) / median(results["deploy"]),
                ">=",
                20.0,
                results["deploy"],
                results["naive"],
                extra={
                    "files": m,
                    "deploy_concurrency_32_s": median(results["deploy32"]),
                    "ratio_concurrency_32": median(results["naive"]) / median(results["deploy32"]),
                },
            )
        )

    def sites(self) -> None:
        """No-op redeploys against `git status`, and one changed file, at each site size."""
        for n in self.sizes.sites:
            log(f"site of {n} files: generating")
            project_id = self.new_project(f"site-{n}")
            folder = self.project_dir(f"site-{n}", project_id)
            stats = generate_site(folder / "public", n, seed=n)
            self.info.setdefault("sites", {})[n] = stats.to_json()
            git_setup(folder)
            log(f"site of {n} files: cold deploy ({stats.bytes / 1e6:.0f} MB)")
            with self.sample_server(f"cold deploy of {n} mixed files") if n == 10_000 else _null():
                cold = self.deploy(folder)
            body = cold.json()
            self.info.setdefault("cold_deploys", {})[n] = {
                "seconds": cold.wall,
                "files_per_s": body["uploaded"] / cold.wall,
                "mb_per_s": body["bytes"] / cold.wall / 1e6,
                "client_cpu_ms_per_file": cold.cpu / body["uploaded"] * 1000,
                "peak_rss_mb": cold.maxrss_kb / 1024,
            }
            log(
                f"site of {n} files: cold deploy {cold.wall:.1f} s "
                f"({body['uploaded'] / cold.wall:.0f} files/s)"
            )
            if budget := RSS_BUDGET_MB.get(n):
                peak = cold.maxrss_kb / 1024
                self.add(
                    Scenario(
                        f"cold deploy, {n // 1000}k files: peak RSS",
                        "peak RSS of the deploy process",
                        f"{budget} MB budget",
                        peak,
                        float(budget),
                        "MB",
                        peak / budget,
                        "<=",
                        1.0,
                        [peak],
                    )
                )
            self.noop(n, folder)
            if n == 10_000:
                self.one_change(folder, project_id)
                self.hashing(folder / "public")
            self.sample_client(f"no-op redeploy of {n} files", folder)
            self.drop_project(project_id)
            shutil.rmtree(folder)

    def noop(self, n: int, folder: Path) -> None:
        """Nothing changed: the deploy's cost should approach the stat pass git also does."""
        self.deploy(folder)  # warm the page cache and the hash cache
        git_status(folder)
        deploy_s: list[float] = []
        inner_ms: list[float] = []
        git_s: list[float] = []
        for _ in range(self.sizes.runs):
            git_s.append(git_status(folder))
            run = self.deploy(folder)
            body = run.json()
            if body.get("uploaded") != 0:
                raise RuntimeError(f"a no-op deploy uploaded files: {body}")
            deploy_s.append(run.wall)
            inner_ms.append(body["duration_ms"])
        bound = {10_000: 4.0, 100_000: 2.0}.get(n)
        self.add(
            Scenario(
                f"no-op redeploy, {n // 1000}k files",
                "`mosaicsync deploy` with nothing changed (CLI)",
                "`git status` on the same tree",
                median(deploy_s),
                median(git_s),
                "s",
                median(deploy_s) / median(git_s),
                "<=",
                bound or float("inf"),
                deploy_s,
                git_s,
                note="" if bound else "no target at this size",
                extra={
                    "library_ms": median(inner_ms),
                    "library_ratio": median(inner_ms) / 1000 / median(git_s),
                },
            )
        )

    def one_change(self, folder: Path, project_id: str) -> None:
        """One edit should cost the no-op plus that one upload, not a pass over the site."""
        rel = "assets/js/app.js"
        path = folder / "public" / rel
        with httpx.Client(headers={"X-API-Key": KEY}, timeout=60) as http:
            upload_s: list[float] = []
            noop_s: list[float] = []
            change_s: list[float] = []
            uploaded: list[int] = []
            for _ in range(self.sizes.runs):
                noop_s.append(self.deploy(folder).wall)
                touch_one(folder / "public", rel)
                run = self.deploy(folder)
                uploaded.append(run.json().get("uploaded", -1))
                change_s.append(run.wall)
                # The baseline's upload: the same file, one warm POST.
                started = time.perf_counter()
                http.post(
                    f"{self.api}/{project_id}/files",
                    json={"filename": rel, "content": path.read_text()},
                ).raise_for_status()
                upload_s.append(time.perf_counter() - started)
        touch_one(folder / "public", rel)
        self.sample_client("one changed file in 10k", folder)
        baseline = median(noop_s) + median(upload_s)
        self.add(
            Scenario(
                "one changed file, 10k files",
                "`mosaicsync deploy` after editing one file",
                "no-op redeploy + one POST /files",
                median(change_s),
                baseline,
                "s",
                median(change_s) / baseline,
                "<=",
                1.3,
                change_s,
                [a + b for a, b in zip(noop_s, upload_s, strict=True)],
                note=""
                if max(uploaded) == 1
                else f"each deploy uploaded {max(uploaded)} files for one edit",
                extra={
                    "noop_s": median(noop_s),
                    "one_upload_s": median(upload_s),
                    "files_uploaded": max(uploaded),
                },
            )
        )

    def checks(self) -> None:
        """The preflight checks must not slow a cold deploy by more than a tenth: a cold deploy
        (CLI) of the 10k site against the same deploy minus what its checks cost, measured on
        the same tree with nothing cached (what that deploy's checks had to do)."""
        from mosaicsync.config import load_config
        from mosaicsync.deploy import project_rules
        from mosaicsync.preflight import Preflight, Secrets

        n = 10_000
        folder = self.tmp / "projects" / "checks"
        generate_site(folder / "public", n, seed=7)
        cold_s: list[float] = []
        check_s: list[float] = []
        read: list[int] = []
        for i in range(self.sizes.runs):
            project_id = self.new_project(f"checks-{i}")
            self.link(folder, project_id)
            shutil.rmtree(folder / ".mosaicsync", ignore_errors=True)
            run = self.deploy(folder)
            cold_s.append(run.wall)
            if run.json()["findings"] and any(
                f["severity"] == "error" for f in run.json()["findings"]
            ):
                raise RuntimeError(f"the bench site has findings: {run.json()['findings'][:3]}")
            config = load_config(folder / "mosaic.toml")
            assert self.client is not None
            rules = project_rules(config)
            scanned = scan(config.static_root, rules, None)
            secrets = Secrets(KEY, (), functools.partial(self.client.database, project_id))
            preflight = Preflight(self.tmp, secrets, use_cache=False)  # nothing cached
            started = time.perf_counter()
            report = preflight.check(scanned.files, scanned.skipped, rules)
            check_s.append(time.perf_counter() - started)
            read.append(report.files_read)
            self.drop_project(project_id)
        without = [c - k for c, k in zip(cold_s, check_s, strict=True)]
        self.add(
            Scenario(
                "preflight checks, cold deploy of 10k files",
                "cold deploy of the 10k mixed site (CLI), checks included",
                "the same deploy minus its checks' own time (secrets and references, cold)",
                median(cold_s),
                median(without),
                "s",
                median(cold_s) / median(without),
                "<=",
                1.10,
                cold_s,
                without,
                extra={"checks_s": median(check_s), "files_read": max(read)},
            )
        )
        shutil.rmtree(folder)

    def history(self) -> None:
        """Deploy history must be cheap when nothing is rolled back, and a rollback no dearer
        than the deploy it undoes: a cold deploy with and without history, a rollback of 100
        changed files against the deploy that changes them back, and a no-op deploy with a
        full history against one with none."""
        self.history_cold()
        n = 10_000
        source = self.tmp / "history-src"
        log(f"history: generating a site of {n} files")
        generate_site(source, n, seed=n)
        self.history_rollback(source, n)
        self.history_noop(source, n)
        shutil.rmtree(source)

    def history_cold(self) -> None:
        """A cold deploy packs every site file it adds: at most a tenth more than with history
        off, on a fresh project each run."""
        n = self.sizes.small_files
        folder = self.tmp / "projects" / "history-cold"
        generate_site(folder / "public", n, profile="small", seed=7)
        with_s: list[float] = []
        without_s: list[float] = []
        packed: list[int] = []
        for i in range(self.sizes.runs + 1):
            for kind in ("history", "off") if i % 2 == 0 else ("off", "history"):
                project_id = self.new_project(f"history-cold-{kind}-{i}")
                try:
                    shutil.rmtree(folder / ".mosaicsync", ignore_errors=True)
                    self.link(folder, project_id, keep=None if kind == "history" else 0)
                    run = self.deploy(folder)
                    body = run.json()
                    if body.get("uploaded") != n:
                        raise RuntimeError(f"a cold deploy uploaded {body.get('uploaded')} of {n}")
                    kept = (body.get("history") or {}).get("packed_files", 0)
                    if (kept == 0) == (kind == "history"):
                        raise RuntimeError(f"history {kind}: {kept} files packed: {body}")
                    packed.append(kept)
                    if i > 0:  # the first pair warms caches and is dropped
                        (with_s if kind == "history" else without_s).append(run.wall)
                finally:
                    self.drop_project(project_id)
        self.add(
            Scenario(
                f"history cost, cold deploy of {n:,} small files",
                f"cold deploy of {n} small files (CLI), history on (default keep)",
                "the same with `[history] keep = 0`",
                median(with_s),
                median(without_s),
                "s",
                median(with_s) / median(without_s),
                "<=",
                1.10,
                with_s,
                without_s,
                extra={"files": n, "packed_files": max(packed)},
            )
        )
        shutil.rmtree(folder)

    def history_rollback(self, source: Path, n: int) -> None:
        """Undoing 100 edits should cost about what deploying them back costs: `rollback` to
        the previous deploy against a deploy that writes the old bytes back, both from the
        edited state to the original one."""
        changed = 100
        project_id = self.new_project("history-rollback")
        folder = self.project_dir("history-rollback", project_id)
        public = folder / "public"
        shutil.copytree(source, public)
        pages = sorted(p for p in public.rglob("*.html") if p.name != "index.html")
        step = max(1, len(pages) // changed)
        picked = pages[::step][:changed]
        old = {p: p.read_bytes() for p in picked}
        new = {p: b + f"\n<!-- edited {i} -->\n".encode() for i, (p, b) in enumerate(old.items())}

        def write(contents: dict[Path, bytes]) -> None:
            for path, data in contents.items():
                path.write_bytes(data)

        self.deploy(folder)  # the original site
        write(new)
        self.deploy(folder)  # the edited site, live
        live = "edited"
        rollback_s: list[float] = []
        deploy_s: list[float] = []
        fetched: list[int] = []
        try:
            for i in range(self.sizes.runs + 1):
                for kind in ("rollback", "deploy") if i % 2 == 0 else ("deploy", "rollback"):
                    if live != "edited":  # back to the edited site, untimed
                        write(new)
                        self.deploy(folder)
                    if kind == "rollback":
                        run = self.rollback(folder)
                        body = run.json()
                        done = body.get("restored")
                        fetched.append(body.get("fetched_bytes", 0))
                    else:
                        write(old)
                        run = self.deploy(folder)
                        done = run.json().get("uploaded")
                    if done != changed:
                        raise RuntimeError(f"{kind} moved {done} files, not {changed}")
                    live = "original"
                    if i > 0:  # the first pair warms caches and is dropped
                        (rollback_s if kind == "rollback" else deploy_s).append(run.wall)
        finally:
            self.drop_project(project_id)
        self.add(
            Scenario(
                f"rollback {changed} changed files in {n // 1000}k",
                "`mosaicsync rollback --yes` to the previous deploy (CLI)",
                f"`mosaicsync deploy` writing the same {changed} files back",
                median(rollback_s),
                median(deploy_s),
                "s",
                median(rollback_s) / median(deploy_s),
                "<=",
                1.5,
                rollback_s,
                deploy_s,
                extra={"files": n, "changed": changed, "fetched_bytes": max(fetched)},
            )
        )
        shutil.rmtree(folder)

    def history_noop(self, source: Path, n: int) -> None:
        """A full history must not slow the deploy that finds nothing to do: 20 retained
        deploys against none, the same site on both sides."""
        retained = 20
        with_id = self.new_project("history-noop-full")
        without_id = self.new_project("history-noop-off")
        full = self.project_dir("history-noop-full", with_id)
        off = self.project_dir("history-noop-off", without_id, keep=0)
        try:
            shutil.copytree(source, full / "public")
            pages = sorted((full / "public").rglob("*.html"))
            log(f"history: building {retained} retained deploys")
            self.deploy(full)
            for i in range(retained):  # one edited file each, past `keep` so one is pruned
                touch_one(full / "public", pages[i].relative_to(full / "public").as_posix())
                self.deploy(full)
            env = {**self.env, "MOSAIC_API_URL": self.api}
            listing = run_child(
                [PY, "-m", "mosaicsync", "deploys", "--json", "--limit", "100"], cwd=full, env=env
            ).json()
            entries = listing.get("deploys", listing) if isinstance(listing, dict) else listing
            if len(entries) != retained:
                raise RuntimeError(f"expected {retained} retained deploys, found {len(entries)}")
            shutil.copytree(full / "public", off / "public")
            self.deploy(off)
            full_s: list[float] = []
            off_s: list[float] = []
            for folder in (full, off):  # warm the page cache and the hash cache
                self.deploy(folder)
            for i in range(self.sizes.runs):
                for kind in ("full", "off") if i % 2 == 0 else ("off", "full"):
                    run = self.deploy(full if kind == "full" else off)
                    if run.json().get("uploaded") != 0:
                        raise RuntimeError(f"a no-op deploy uploaded files: {run.json()}")
                    (full_s if kind == "full" else off_s).append(run.wall)
        finally:
            self.drop_project(with_id)
            self.drop_project(without_id)
        self.add(
            Scenario(
                f"no-op with {retained} retained deploys, {n // 1000}k files",
                f"`mosaicsync deploy` with nothing changed, {retained} deploys in the history",
                "the same in a project with no history (`keep = 0`, one cold deploy)",
                median(full_s),
                median(off_s),
                "s",
                median(full_s) / median(off_s),
                "<=",
                1.10,
                full_s,
                off_s,
                extra={"files": n, "retained_deploys": len(entries)},
            )
        )
        shutil.rmtree(full)
        shutil.rmtree(off)

    def hashing(self, public: Path) -> None:
        """A cold scan reads every byte; it should keep up with coreutils on the same files."""
        rules = load_ignore_rules(public, public.parent)
        total = sum(p.stat().st_size for p in public.rglob("*") if p.is_file())
        ours: list[float] = []
        theirs: list[float] = []
        command = "find . -type f -print0 | xargs -0 sha256sum > /dev/null"
        subprocess.run(command, shell=True, cwd=public, check=True)
        for _ in range(self.sizes.runs):
            started = time.perf_counter()
            subprocess.run(command, shell=True, cwd=public, check=True)
            theirs.append(time.perf_counter() - started)
            started = time.perf_counter()
            scan(public, rules, None)
            ours.append(time.perf_counter() - started)
        ours_rate = total / median(ours) / 1e6
        theirs_rate = total / median(theirs) / 1e6
        self.add(
            Scenario(
                "hashing, 10k files",
                "scan() of the 10k site with no hash cache (walk + sha256)",
                "find | xargs sha256sum",
                ours_rate,
                theirs_rate,
                "MB/s",
                ours_rate / theirs_rate,
                ">=",
                0.8,
                [total / s / 1e6 for s in ours],
                [total / s / 1e6 for s in theirs],
            )
        )

    def big_file(self) -> None:
        """A big object must stream: flat memory, and close to curl's speed to the same URL."""
        size = self.sizes.big_file
        folder = self.project_dir("big", "pod-000")
        public = folder / "public"
        public.mkdir(exist_ok=True)
        big = public / "video.bin"
        block = os.urandom(1024 * 1024)
        with open(big, "wb") as f:
            for i in range(size // len(block)):
                f.write(i.to_bytes(8, "big") + block[8:])
        assert self.client is not None
        cold: list[ProcRun] = []
        warm: list[ProcRun] = []
        curl_s: list[float] = []
        for i in range(self.sizes.runs + 1):
            for kind in ("cold", "warm", "curl"):
                project_id = self.new_project(f"big-{kind}-{i}")
                try:
                    if kind == "curl":
                        signed = self.client.upload_url(project_id, "video.bin", size)
                        started = time.perf_counter()
                        subprocess.run(
                            [
                                "curl",
                                "-sS",
                                "--fail",
                                "-T",
                                str(big),
                                "-o",
                                "/dev/null",
                                signed["upload_url"],
                            ],
                            check=True,
                        )
                        if i:
                            curl_s.append(time.perf_counter() - started)
                    else:
                        self.link(folder, project_id)
                        if kind == "cold":
                            shutil.rmtree(folder / ".mosaicsync", ignore_errors=True)
                        run = self.deploy(folder)
                        if i:
                            (cold if kind == "cold" else warm).append(run)
                finally:
                    self.drop_project(project_id)
        mb = size / 1e6
        rate = mb / median([r.wall for r in cold])
        warm_rate = mb / median([r.wall for r in warm])
        curl_rate = mb / median(curl_s)
        peak = max(r.maxrss_kb for r in cold + warm) / 1024
        self.add(
            Scenario(
                f"{size // 1024**2} MiB file to storage",
                "cold deploy (scan, hash and upload)",
                "curl -T to a presigned URL",
                rate,
                curl_rate,
                "MB/s",
                rate / curl_rate,
                ">=",
                0.9,
                [mb / r.wall for r in cold],
                [mb / s for s in curl_s],
                extra={
                    "warm_cache_mb_per_s": warm_rate,
                    "warm_ratio": warm_rate / curl_rate,
                    "peak_rss_mb": peak,
                },
            )
        )
        self.add(
            Scenario(
                f"{size // 1024**2} MiB file: peak RSS",
                "peak RSS of the deploy process",
                "120 MB budget",
                peak,
                120.0,
                "MB",
                peak / 120.0,
                "<=",
                1.0,
                [r.maxrss_kb / 1024 for r in cold + warm],
            )
        )
        shutil.rmtree(folder)

    def migrations(self) -> None:
        """Requests per migration (fitted from two batch sizes) and the time for the big one."""
        assert self.platform is not None
        try:
            from mosaicsync.migrate import Migrator
        except ImportError as exc:
            self.info["migrations"] = f"not available: {exc}"
            log(self.info["migrations"])
            return
        n = self.sizes.migrations
        small = 20
        directories = {count: self.tmp / f"migrations-{count}" for count in (small, n)}
        for count, directory in directories.items():
            directory.mkdir()
            for v in range(1, count + 1):
                (directory / f"{v:04d}_create_t{v}.sql").write_text(
                    f"CREATE TABLE t{v} (id bigserial PRIMARY KEY, name text NOT NULL,\n"
                    f"    created_at timestamptz NOT NULL DEFAULT now());\n"
                    f"INSERT INTO t{v} (name) VALUES ('first'), ('second');\n"
                )
        seconds: list[float] = []
        requests: dict[int, list[int]] = {small: [], n: []}
        for _ in range(self.sizes.runs):
            for count, directory in directories.items():
                project_id = self.new_project(f"migrate-{count}")
                sent: list[RequestEvent] = []
                client = MosaicClient(self.api, KEY, on_request=sent.append)
                try:
                    started = time.perf_counter()
                    result = Migrator(client, project_id, directory).up()
                    elapsed = time.perf_counter() - started
                    if len(result.applied) != count:
                        raise RuntimeError(f"applied {len(result.applied)} of {count} migrations")
                finally:
                    client.close()
                    self.drop_project(project_id)
                requests[count].append(sum(1 for e in sent if e.path.endswith("/sql")))
                if count == n:
                    seconds.append(elapsed)
        per = (median(requests[n]) - median(requests[small])) / (n - small)
        constant = median(requests[n]) - per * n
        self.info["migrations"] = {
            "migrations": n,
            "sql_requests": median(requests[n]),
            "sql_requests_per_migration": per,
            "constant_per_run": constant,
            "seconds": median(seconds),
            "ms_per_migration": median(seconds) / n * 1000,
        }
        self.add(
            Scenario(
                f"{n} migrations",
                f"SQL requests of `Migrator.up()` for {n} migrations, per migration",
                "1 request per migration",
                per,
                1.0,
                "requests",
                per,
                "<=",
                1.0,
                note=f"+{constant:g} per run; {median(seconds):.2f} s for {n}",
                extra=self.info["migrations"],
            )
        )

    def watch(self, quick: bool) -> None:
        """Save-to-served latency, measured by the watch mode's own scenario when it exists."""
        try:
            module = importlib.import_module("bench.watch_latency")
        except ImportError:
            self.info["watch"] = "not available"
            log("watch latency: not available")
            return
        try:
            self.info["watch"] = module.run(quick)
        except Exception as exc:  # another team's scenario must not sink the whole run
            self.info["watch"] = f"failed: {type(exc).__name__}: {exc}"
        log(f"watch latency: {self.info['watch']}")


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield


def git(folder: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", *args],
        cwd=folder,
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout


def git_setup(folder: Path) -> None:
    """Commit the tree so `git status` has every file to stat (objects are not needed for that)."""
    (folder / ".gitignore").write_text(".mosaicsync/\n")
    git(folder, "init", "-q")
    listing = git(folder, "ls-files", "-z", "--others", "--exclude-standard")
    git(folder, "update-index", "--add", "--info-only", "-z", "--stdin", stdin=listing)
    tree = git(folder, "write-tree", "--missing-ok").strip().decode()
    commit = git(folder, "commit-tree", tree, "-m", "site").strip().decode()
    git(folder, "update-ref", "HEAD", commit)
    time.sleep(1.1)  # past git's racy-clean second, then refresh the index's stat data
    git(folder, "update-index", "--refresh")
    status = git(folder, "status", "--porcelain")
    if status.strip():
        raise RuntimeError(f"git status is not clean after setup: {status[:500]!r}")


def git_status(folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["git", "status", "--porcelain"], cwd=folder, check=True, capture_output=True)
    return time.perf_counter() - started


def leftovers(needles: list[str]) -> list[str]:
    """Processes still running whose command line names our temp dir (or our cluster)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(needle in cmd for needle in needles):
            found.append(f"{pid} {cmd[:120]}")
    return found


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (about 3 minutes)")
    parser.add_argument("--profile", action="store_true", help="sample hot paths with py-spy")
    parser.add_argument("--runs", type=int, help="runs per scenario (median; default 5)")
    parser.add_argument("--fast-db", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument(
        "--only", help="comma-separated: capacity,small,sites,big,migrations,checks,history,watch"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.profile and not (Path(PY).parent / "py-spy").exists():
        parser.error("--profile needs py-spy: pip install -e '.[bench]'")
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**asdict(sizes), "runs": args.runs})
    only = set(args.only.split(",")) if args.only else None
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    tmp = platform_tempdir("mosaicsync-bench-")
    bench = Bench(tmp, sizes, profile=args.profile, fast_db=args.fast_db)
    bench.info["environment"] = environment()
    bench.info["sizes"] = asdict(sizes)
    cluster_marker = tmp / "platform" / "pg-location"
    cluster = ""
    try:
        bench.start()
        if cluster_marker.exists():
            cluster = cluster_marker.read_text().strip()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("capacity", bench.capacity),
            ("small", lambda: bench.cold_small(bench.info["capacity"])),
            ("sites", bench.sites),
            ("big", bench.big_file),
            ("migrations", bench.migrations),
            ("checks", bench.checks),
            ("history", bench.history),
            ("watch", lambda: bench.watch(args.quick)),
        ]
        for name, step in steps:
            if only and name not in only and not (name == "capacity" and "small" in only):
                continue
            log(f"-- {name}")
            step()
    finally:
        bench.stop()
        left = leftovers([str(tmp), *([cluster] if cluster else [])])
        shutil.rmtree(tmp, ignore_errors=True)
        if left:
            log("left running: " + "; ".join(left))
    bench.info["elapsed_s"] = time.perf_counter() - started
    paths = report.write(args.out, mode, bench.scenarios, bench.info, bench.profiles)
    print(report.summary(bench.scenarios), file=sys.stderr)
    if mode == "full" and not only and args.out == RESULTS:
        # The README shows the latest complete full run, never a partial one.
        report.update_readme(ROOT / "README.md", bench.scenarios)
        paths.append(ROOT / "README.md")
    log(f"done in {bench.info['elapsed_s']:.0f} s: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
