"""The reference rewrite end to end: the real CLI deploys to the real local platform, and the
served page differs from the source only where it names a file that went to storage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, LocalServer

pytestmark = pytest.mark.integration

PAGE = """<!doctype html>
<html><head><title>src="font.woff2"</title>
<style>
/* url(hero.avif) */
.hero { background-image: image-set("hero.avif" 1x); }
</style></head>
<body>
<!-- preloaded elsewhere: <link rel=preload href="font.woff2"> src="font.woff2" -->
<video src=clip.mp4 controls></video>
<div class="hero"></div>
<pre>&lt;video src="clip.mp4"&gt;</pre>
<script>const u = "font.woff2"; document.title = '<img src="hero.avif">';</script>
</body></html>
"""


def run_cli(args: list[str], cwd: Path, server: LocalServer) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        input="",
    )
    assert KEY_A not in out.stdout + out.stderr, "the API key leaked into output"
    assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def attribute_value(url: str) -> str:
    """How a URL goes into an unquoted attribute: as is when it can, else double-quoted."""
    if re.search(r"[\s\"'=<>`&]", url):
        return '"' + url.replace("&", "&amp;").replace('"', "&quot;") + '"'
    return url


def test_served_page_changes_only_the_storage_references(
    tmp_path: Path, local_server: LocalServer
) -> None:
    run_cli(["init", "site", "--template", "basic", "--name", "Rewrite"], tmp_path, local_server)
    site = tmp_path / "site"
    run_cli(["link", "--create", "Rewrite"], site, local_server)
    project_id = tomllib.loads((site / "mosaic.toml").read_text())["app"]["project_id"]
    public = site / "public"
    files = {name: os.urandom(3000) for name in ("font.woff2", "clip.mp4", "hero.avif")}
    for name, data in files.items():
        (public / name).write_bytes(data)
    (public / "index.html").write_text(PAGE)

    result = json.loads(run_cli(["deploy", "--json"], site, local_server).stdout)
    assert result["storage"] == ["clip.mp4", "font.woff2", "hero.avif"]

    def served(path: str) -> httpx.Response:
        return httpx.get(f"{local_server.base_url}/sites/{project_id}/{path}")

    urls = served("mosaic-assets.json").json()
    for name, data in files.items():
        assert httpx.get(urls[name]).content == data
    expected = PAGE.replace(
        "<video src=clip.mp4 ", f"<video src={attribute_value(urls['clip.mp4'])} "
    ).replace('image-set("hero.avif" 1x)', f'image-set("{urls["hero.avif"]}" 1x)')
    assert expected != PAGE
    # Byte for byte: the script, the comment, the title and the text did not move.
    assert served("index.html").text == expected
    assert (public / "index.html").read_text() == PAGE
