"""What every endpoint needs: the platform, the caller's account, the JSON body, the base URL."""

from __future__ import annotations

import json
import re
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
        body = json.loads(raw, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be read as JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    # Only a \uD800-\uDFFF escape can give a lone surrogate: skip the walk when there is none.
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(body)
    return body


# Python's own limit on converting digits to an int (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse_int(text: str) -> int:
    """A JSON integer, or 400 when it has more digits than any field could use."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ApiError(
            400,
            f"request body has an integer of {digits} digits, over the {MAX_INT_DIGITS}-digit "
            "limit; no field takes a number that large",
        )
    return int(text)


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """400 naming the first field whose text holds a lone surrogate (\\ud800 alone): it parses
    to a string that is not Unicode text, which no name, subject or file can be stored as."""
    todo: list[tuple[str, object]] = [("", body)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                raise ApiError(400, _surrogate_message(f'field "{where}"', value))
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if _LONE_SURROGATE.search(key):
                    inside = f' of "{where}"' if where else ""
                    raise ApiError(400, _surrogate_message(f"a key{inside}", key))
                todo.append((f"{where}.{key}" if where else key, item))


def _surrogate_message(where: str, text: str) -> str:
    code = ord(_LONE_SURROGATE.search(text).group())  # type: ignore[union-attr]
    return (
        f"{where} holds a lone surrogate (\\u{code:04x}), half of a UTF-16 pair, which is "
        "not Unicode text: send the whole character, or UTF-8 text"
    )
