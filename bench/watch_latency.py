"""Save-to-served latency of `mosaicsync watch` against the local platform.

Starts its own platform (own data dir, free port), a project and `mosaicsync watch --json` in a
subprocess, then saves a page many times. Each latency runs from the write until the platform
serves the new bytes, found by polling with If-None-Match (a cheap 304 until the content
changes). Target: p50 <= 100 ms, p95 <= 250 ms.

    python bench/watch_latency.py results/watch.json           # 200 saves
    python bench/watch_latency.py results/watch.json --quick   # 50 saves

`run(quick)` is what the harness (`bench/run.py`) calls; everything it starts it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from mosaicsync.api import MosaicClient
from mosaicsync.config import render_config
from mosaicsync.local.process import LocalProcess

KEY = "mk_bench_watch_latency"
TARGET_P50_MS = 100.0
TARGET_P95_MS = 250.0
POLL_S = 0.002  # fine enough for the figures, coarse enough not to starve the watcher
GAP_S = 0.25  # between saves: each a lone save, as a person makes them (not a burst)
TIMEOUT_S = 10.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the two nearest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


class _Watch:
    """`mosaicsync watch --json` in a subprocess; its events are read on a thread."""

    def __init__(self, site: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mosaicsync", "watch", "--json"],
            cwd=site,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._pump)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event.get("event") == "watching":
                self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _page(i: int) -> str:
    filler = "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n" * 60
    return f"<!doctype html>\n<html><head><title>save {i}</title></head>\n<body>\n{filler}</body>\n"


def _measure(site: Path, url: str, saves: int) -> list[float]:
    page = site / "public" / "page.html"
    latencies: list[float] = []
    with httpx.Client(timeout=TIMEOUT_S) as http:
        etag = http.get(url).headers.get("etag", "")
        for i in range(1, saves + 1):
            body = _page(i)
            started = time.perf_counter()
            page.write_text(body)
            deadline = started + TIMEOUT_S
            while True:
                response = http.get(url, headers={"If-None-Match": etag} if etag else {})
                if response.status_code == 200 and response.text == body:
                    latencies.append(time.perf_counter() - started)
                    etag = response.headers.get("etag", "")
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"save {i} was not served within {TIMEOUT_S:.0f} s")
                time.sleep(POLL_S)
            time.sleep(GAP_S)
    return latencies


def run(quick: bool = False, saves: int | None = None) -> dict[str, Any]:
    """Measure `saves` saves (50 quick, 200 full); returns the figures as a JSON-ready dict."""
    count = saves or (50 if quick else 200)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env["MOSAIC_LOCAL_FAST_DB"] = "1"
    with tempfile.TemporaryDirectory(prefix="mosaicsync-watch-bench-") as tmp:
        root = Path(tmp)
        if os.geteuid() == 0:
            os.chmod(root, 0o711)  # so the cluster stays inside (see platform_tempdir)
        args = ["--api-key", KEY, "--rate-limit", "0"]
        platform = LocalProcess(root / "data", args=args, env=env)
        platform.start()
        watch = None
        try:
            with MosaicClient(platform.api_url, KEY) as client:
                project_id = client.create_project("Watch latency")["project_id"]
                client.wait_until_running(project_id)
            site = root / "site"
            (site / "public").mkdir(parents=True)
            (site / "mosaic.toml").write_text(render_config("Watch latency", project_id=project_id))
            (site / "public" / "page.html").write_text(_page(0))
            for i in range(50):  # a small site around the page being edited
                (site / "public" / f"asset{i:02}.css").write_text(f".c{i} {{ color: red; }}\n")
            watch = _Watch(site, {**env, "MOSAIC_API_URL": platform.api_url, "MOSAIC_API_KEY": KEY})
            if not watch.ready.wait(60) or watch.proc.poll() is not None:
                raise RuntimeError("mosaicsync watch did not start")
            url = f"{platform.base_url}/sites/{project_id}/page.html"
            latencies = _measure(site, url, count)
            syncs = [e for e in watch.events if e.get("event") == "sync"]
        finally:
            if watch is not None:
                watch.stop()
            platform.stop()
    ms = [s * 1000 for s in latencies]
    p50, p95 = percentile(ms, 50), percentile(ms, 95)
    return {
        "saves": count,
        "syncs": len(syncs),
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "target": {"p50_ms": TARGET_P50_MS, "p95_ms": TARGET_P95_MS},
        "met": p50 <= TARGET_P50_MS and p95 <= TARGET_P95_MS,
        "machine": {"cpus": os.cpu_count(), "system": host.platform()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="50 saves instead of 200")
    parser.add_argument("--saves", type=int, help="number of saves (at least 50 for the target)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.saves)
    print(
        f"watch save-to-served over {result['saves']} saves: p50 {result['p50_ms']:.1f} ms, "
        f"p95 {result['p95_ms']:.1f} ms (max {result['max_ms']:.1f} ms; target p50 <= "
        f"{TARGET_P50_MS:.0f} ms, p95 <= {TARGET_P95_MS:.0f} ms: "
        f"{'met' if result['met'] else 'MISSED'})"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
