"""The demo, end to end on the embedded local platform: start it, scaffold a site from a
template, deploy it, fetch the served page, edit one file and deploy again (one upload).

Unattended (stdin not a terminal) it exits 0 when every step worked; on a terminal it keeps the
platform running until Ctrl-C so the site can be opened in a browser.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from mosaicsync.local.process import LocalProcess, platform_tempdir

KEY = "mk_demo_local_key"


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def mosaicsync(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    print("$ mosaicsync " + shlex.join(args), flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    print(out.stdout, end="", flush=True)
    if out.returncode != 0:
        raise SystemExit(f"demo failed: `mosaicsync {' '.join(args)}` exited {out.returncode}")
    return out.stdout


def fetch(platform: LocalProcess, project_id: str, path: str = "/") -> httpx.Response:
    # Python cannot resolve *.localhost (browsers and curl can): connect to the platform and
    # name the site in the Host header, as a browser does.
    host = f"{project_id}.localhost:{platform.port}"
    return httpx.get(platform.base_url + path, headers={"Host": host})


def main() -> int:
    interactive = sys.stdin.isatty()
    work = platform_tempdir("mosaic-demo-")
    try:
        step("Start the local Mosaic platform (embedded PostgreSQL)")
        with LocalProcess(work / "platform", ["--api-key", KEY]) as platform:
            print(f"API {platform.api_url}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
            env.update(MOSAIC_API_URL=platform.api_url, MOSAIC_API_KEY=KEY)

            step("Scaffold a site from the `basic` template and create a project for it")
            mosaicsync(["init", "site", "--template", "basic", "--name", "Demo Site"], work, env)
            site = work / "site"
            mosaicsync(["link", "--create", "Demo Site"], site, env)

            step("Deploy it")
            first = json.loads(mosaicsync(["deploy", "--json"], site, env))
            pid = first["project_id"]
            page = fetch(platform, pid)
            expected = (site / "public" / "index.html").read_text()
            print(f"Fetched {first['url']}/ -> {page.status_code}, {len(page.content)} bytes")
            if page.status_code != 200 or page.text != expected:
                raise SystemExit("demo failed: the served page differs from public/index.html")

            step("Edit one file and deploy again: exactly one upload")
            css = site / "public" / "style.css"
            css.write_text(css.read_text() + "\nh1 { letter-spacing: 0.02em; }\n")
            second = json.loads(mosaicsync(["deploy", "--json"], site, env))
            served = fetch(platform, pid, "/style.css").text
            if second["uploaded"] != 1 or served != css.read_text():
                raise SystemExit(f"demo failed: expected one upload, got {second['uploaded']}")
            print(f"uploaded {second['uploaded']}, unchanged {second['unchanged']}")

            print(f"\nThe site: {first['url']}/  (also {platform.base_url}/sites/{pid}/)")
            outbox = f"{platform.base_url}/_local/?token={platform.operator_token}"
            print(f"Outbox and tickets: {outbox}")
            if interactive:
                print("The platform keeps running; press Ctrl-C to stop.", flush=True)
                try:
                    assert platform.proc is not None
                    platform.proc.wait()
                except KeyboardInterrupt:
                    pass
        step("Stopped the local platform. Demo complete.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
