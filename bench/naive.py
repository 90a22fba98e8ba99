"""The documented way to publish a site without a tool: one POST /files per file, in a loop.

This is the baseline a deploy is compared with. It is the generous version of it: one keep-alive
connection (a shell loop of `curl` would also pay a connection and a process per file), text as
UTF-8 and other files as base64, exactly as the platform's quick start shows.

    python -m bench.naive --api-url http://127.0.0.1:8787/v1/project --project pod-16f DIR
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import httpx

TEXT = {".html", ".css", ".js", ".json", ".txt", ".svg"}


def upload_tree(client: httpx.Client, api_url: str, project: str, root: Path) -> int:
    """POST every file under `root`, one after the other; the number sent."""
    sent = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        body: dict[str, str] = {"filename": path.relative_to(root).as_posix()}
        if path.suffix.lower() in TEXT:
            body["content"] = data.decode("utf-8")
        else:
            body["content"] = base64.b64encode(data).decode("ascii")
            body["encoding"] = "base64"
        response = client.post(f"{api_url}/{project}/files", json=body)
        response.raise_for_status()
        sent += 1
    return sent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    headers = {"X-API-Key": os.environ["MOSAIC_API_KEY"]}
    with httpx.Client(headers=headers, timeout=60) as client:
        sent = upload_tree(client, args.api_url, args.project, args.root)
    print(sent)
    sys.exit(0)


if __name__ == "__main__":
    main()
