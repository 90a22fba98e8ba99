"""What every endpoint needs: the platform, the caller's account, the JSON body, the base URL."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from mosaicsync.local.errors import ApiError
from mosaicsync.local.platform import Platform
from mosaicsync.local.state import hash_secret

# Storage URLs are fetched and uploaded to straight from pages of other origins.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Expose-Headers": "ETag, Content-Length",
}


def platform_of(request: Request) -> Platform:
    return request.app.state.platform


async def account(request: Request) -> int:
    """The account of the request's API key (or 401), within the key's rate limit (or 429)."""
    p = platform_of(request)
    key = request.headers.get("x-api-key")
    account_id = p.accounts.authenticate(key)
    p.limiter.check(hash_secret(key or ""))
    return account_id


def request_base(request: Request) -> str:
    """The scheme and host the client used, so URLs we hand out go back the same way."""
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


async def read_json(request: Request) -> dict[str, Any]:
    """The JSON object body, or 413 past the body limit, or 400 saying what is wrong."""
    limit = platform_of(request).settings.max_body
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, over the {limit}-byte limit")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be read as JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body
