"""Live reload for `mosaicsync local --dev`: a server-sent-events channel per project.

The platform itself announces changes, after a file has been stored, so a browser never reloads
into a half-uploaded site. Changes are gathered for a short quiet window, so a burst of uploads
gives one reload; a change made only of stylesheets lets the page swap them without reloading.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

# A burst of uploads is parallel with short gaps; one reload once it has been quiet this long.
QUIET_S = 0.03
MAX_WAIT_S = 0.5
PING_S = 15.0
RETRY_MS = 500
PATH = "/_local/reload"

_HEAD_END = re.compile(rb"</head\s*>", re.IGNORECASE)
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)

# The page side. It opens the stream only while the tab is visible (a hidden tab would hold one
# of the browser's few connections per host), and reloads when the platform restarted (new boot)
# or the site changed while the stream was closed (newer version).
CLIENT_JS = """
(function () {
  var project = %(project)s, version = %(version)d, boot = null, source = null;
  var url = "%(path)s?project=" + encodeURIComponent(project);
  function open() {
    if (source) return;
    source = new EventSource(url);
    source.addEventListener("hello", function (e) {
      var d = JSON.parse(e.data);
      if ((boot !== null && d.boot !== boot) || d.version > version) { location.reload(); return; }
      boot = d.boot;
    });
    source.addEventListener("reload", function (e) {
      var d = JSON.parse(e.data);
      version = d.version;
      if (!swapStyles(d.paths)) location.reload();
    });
  }
  function close() { if (source) { source.close(); source = null; } }
  function sitePath(href) {
    try { return decodeURIComponent(new URL(href, location.href).pathname); }
    catch (e) { return ""; }
  }
  function swapStyles(paths) {
    if (!paths.length) return false;
    var links = Array.prototype.slice.call(
      document.querySelectorAll('link[rel~="stylesheet"][href]'));
    var hits = [];
    for (var i = 0; i < paths.length; i++) {
      if (!/\\.css$/i.test(paths[i])) return false;
      var suffix = "/" + paths[i];
      var found = links.filter(function (l) {
        return sitePath(l.href).slice(-suffix.length) === suffix;
      });
      if (!found.length) return false;
      hits = hits.concat(found);
    }
    hits.forEach(function (link) {
      var next = link.cloneNode();
      var u = new URL(link.href, location.href);
      u.searchParams.set("mosaic-reload", String(Date.now()));
      next.href = u.href;
      var drop = function () { link.remove(); };
      next.addEventListener("load", drop);
      next.addEventListener("error", drop);
      link.after(next);
    });
    return true;
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) close(); else open();
  });
  addEventListener("pagehide", close);
  if (!document.hidden) open();
})();
"""


def inject_script(html: bytes, project_id: str, version: int) -> bytes:
    """The page with the reload script before `</head>`, else before the last `</body>`, else at
    the end (the order mkdocs and Eleventy use)."""
    script = CLIENT_JS % {"project": json.dumps(project_id), "version": version, "path": PATH}
    tag = b'<script data-mosaic-reload="">' + script.encode() + b"</script>\n"
    head = _HEAD_END.search(html)
    if head:
        return html[: head.start()] + tag + html[head.start() :]
    bodies = list(_BODY_END.finditer(html))
    if bodies:
        at = bodies[-1].start()
        return html[:at] + tag + html[at:]
    return html + b"\n" + tag


@dataclass
class _Project:
    version: int = 0
    subscribers: set[asyncio.Queue[dict | None]] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    first_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class ReloadHub:
    """Who listens to which project, and the changes not yet announced.

    Used on the server's event loop only; `version` may be read from any thread.
    """

    def __init__(self, quiet: float = QUIET_S, max_wait: float = MAX_WAIT_S) -> None:
        self.boot = secrets.token_hex(8)
        self.quiet = quiet
        self.max_wait = max_wait
        self.closed = False
        self._projects: dict[str, _Project] = {}

    def _project(self, project_id: str) -> _Project:
        return self._projects.setdefault(project_id, _Project())

    def version(self, project_id: str) -> int:
        """How many reloads the project has had; a page carries the one it was served at."""
        project = self._projects.get(project_id)
        return project.version if project else 0

    def changed(self, project_id: str, path: str) -> None:
        """A file of the project was stored or deleted: announce it once the burst is over."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        project = self._project(project_id)
        now = loop.time()
        if not project.changed:
            project.first_at = now
        project.changed.add(path)
        if project.timer is not None:
            project.timer.cancel()
        at = min(now + self.quiet, project.first_at + self.max_wait)
        project.timer = loop.call_at(at, self._announce, project_id)

    def _announce(self, project_id: str) -> None:
        project = self._project(project_id)
        project.timer = None
        if not project.changed:
            return
        project.version += 1
        message = {
            "project": project_id,
            "version": project.version,
            "paths": sorted(project.changed),
        }
        project.changed = set()
        for queue in project.subscribers:
            queue.put_nowait(message)

    def close(self) -> None:
        """End every stream now, so a server shutting down does not wait on open connections."""
        self.closed = True
        for project in self._projects.values():
            if project.timer is not None:
                project.timer.cancel()
                project.timer = None
            for queue in project.subscribers:
                queue.put_nowait(None)

    async def stream(self, project_id: str) -> AsyncIterator[bytes]:
        """The event stream of one subscriber: `hello`, then one `reload` per burst, and pings."""
        queue: asyncio.Queue[dict | None] = asyncio.Queue()
        project = self._project(project_id)
        project.subscribers.add(queue)
        try:
            hello = {"boot": self.boot, "version": project.version}
            yield f"retry: {RETRY_MS}\nevent: hello\ndata: {json.dumps(hello)}\n\n".encode()
            while not self.closed:
                try:
                    message = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if message is None:
                    return
                yield f"event: reload\ndata: {json.dumps(message)}\n\n".encode()
        finally:
            project.subscribers.discard(queue)

    async def endpoint(self, request: Request) -> Response:
        """`GET /_local/reload?project=ID`: the stream for pages of that project."""
        project_id = request.query_params.get("project", "")
        if not project_id:
            return JSONResponse(
                {"success": False, "error": "pass ?project=ID, the project whose pages listen"},
                status_code=400,
            )
        # Pages under /sites/{id}/ run sandboxed, in an opaque origin: they need CORS to listen.
        headers = {
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "Access-Control-Allow-Origin": "*",
        }
        return StreamingResponse(
            self.stream(project_id), media_type="text/event-stream", headers=headers
        )
