"""The bad-input catalogue: what a careful user might feed `mosaicsync deploy`, and what happens.

One table (`CASES`) drives one parametrized test and `docs/bad-inputs.md`, which
`python -m tests.test_bad_inputs` regenerates and `test_docs_table_is_in_sync` keeps honest.
Each case says its exit code, a fragment of its message, and what it may leave behind: errors
leave nothing on the platform (no file, no object, no manifest row, no migration) or, when they
strike midway, only what the manifest records, so the next deploy finishes the job; the inputs
that are not errors must deploy and be served byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import KEY_A, KEY_B, LocalServer
from tests.faults import FaultProxy, Reply, Request
from tests.test_reliability import (
    PlatformState,
    assert_site_equals,
    cli_env,
    create_project,
    platform_state,
    report,
    write_project,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad-inputs.md"

NOTHING = "nothing"  # an error before anything changed on the platform
UNCHANGED = "unchanged"  # an error that left the site deployed before exactly as it was
CONSISTENT = "consistent"  # an error midway: only what the manifest records; a rerun finishes
SERVED = "served"  # not an error: deployed and served byte for byte

OUTCOMES = {
    NOTHING: "nothing: no file, object, manifest row or migration",
    UNCHANGED: "the site deployed before, exactly as it was",
    CONSISTENT: "what arrived, all recorded in the manifest; the next deploy finishes",
    SERVED: "not an error: deployed, every file served byte for byte",
}


# -- the harness -----------------------------------------------------------------------------------


class FakePlatform:
    """A tiny HTTP server that answers every request with one canned response."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        answer = (status, body, content_type)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                code, payload, ctype = answer
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/project"

    def __enter__(self) -> FakePlatform:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


# Runs the CLI with some paths unreadable: the tests run as root, where chmod 000 does not stop
# a read, so the refusal is simulated where the scanner meets it.
DENY_BOOT = """
import builtins, os, sys
deny = set(os.environ["DENY_PATHS"].split(os.pathsep))
real_open, real_scandir = builtins.open, os.scandir
def refused(path):
    try:
        return os.path.realpath(os.fspath(path)) in deny
    except TypeError:
        return False
def guarded_open(file, *args, **kwargs):
    if refused(file):
        raise PermissionError(13, "Permission denied", os.fspath(file))
    return real_open(file, *args, **kwargs)
def guarded_scandir(path="."):
    if refused(path):
        raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_scandir(path)
builtins.open, os.scandir = guarded_open, guarded_scandir
from mosaicsync.cli import main
sys.argv = ["mosaicsync", *sys.argv[1:]]
main()
"""


@dataclass
class Ctx:
    """One case's world: a fresh project folder linked to a fresh project, and how to reach it."""

    server: LocalServer
    project: Path
    project_id: str
    stack: contextlib.ExitStack
    api_url: str = ""
    key: str = KEY_A
    owner_key: str = KEY_A
    env: dict[str, str] = field(default_factory=dict)
    deny: list[Path] = field(default_factory=list)
    args: list[str] = field(default_factory=lambda: ["deploy", "--json"])
    before: PlatformState | None = None
    expected: dict[str, bytes] | None = None  # what must be served, when not just public/

    def deploy_first(self) -> None:
        """A successful deploy of the folder as it is now; the case then breaks something."""
        out = self.run()
        assert out.returncode == 0, out.stdout + out.stderr
        self.before = platform_state(self.server, self.project_id, self.owner_key)

    @property
    def public(self) -> Path:
        return self.project / "public"

    @property
    def config(self) -> Path:
        return self.project / "mosaic.toml"

    @property
    def migrations(self) -> Path:
        path = self.project / "migrations"
        path.mkdir(exist_ok=True)
        return path

    def toml(self, extra: str = "", *, app: str = "", static: str = "") -> None:
        """Rewrite mosaic.toml with extra lines in [app], [static] or at the end."""
        self.config.write_text(
            f'[app]\nname = "case"\nproject_id = "{self.project_id}"\n{app}\n'
            f'[static]\nroot = "public"\n{static}\n{extra}'
        )

    def fake(self, status: int, body: bytes, content_type: str) -> None:
        self.api_url = self.stack.enter_context(FakePlatform(status, body, content_type)).api_url

    def proxy(self, rule: Callable[[Request], Reply | str | None]) -> None:
        proxy = self.stack.enter_context(FaultProxy(self.server.base_url, rules=[rule]))
        self.api_url = proxy.api_url

    def run(self, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        env = cli_env(self.api_url, self.key, **self.env)
        command = [sys.executable, "-m", "mosaicsync"]
        if self.deny:
            env["DENY_PATHS"] = os.pathsep.join(os.path.realpath(p) for p in self.deny)
            command = [sys.executable, "-c", DENY_BOOT]
        return subprocess.run(
            [*command, *(args or self.args)],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


@dataclass(frozen=True)
class Case:
    """One bad (or merely unusual) input and what must come of it."""

    id: str
    input: str
    exit_code: int
    message: str
    outcome: str
    arrange: Callable[[Ctx], None]


CASES: list[Case] = []


def case(
    input: str, exit_code: int, message: str, outcome: str = NOTHING
) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    """Register the decorated arrange function as a case named after it."""

    def register(arrange: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        name = arrange.__name__.replace("_", "-")
        CASES.append(Case(name, input, exit_code, message, outcome, arrange))
        return arrange

    return register


def many_files(ctx: Ctx, count: int = 60) -> None:
    for i in range(count):
        (ctx.public / f"page{i:03d}.html").write_text(f"<p>page {i}</p>\n")


# -- mosaic.toml -----------------------------------------------------------------------------------


@case("mosaic.toml with a syntax error (`[app` never closed)", 2, "invalid TOML")
def toml_syntax_error(ctx: Ctx) -> None:
    ctx.config.write_text('[app\nname = "x"\n')


@case("a mistyped key: `[static] rot = ...`", 2, "unknown key 'rot' (did you mean 'root'?)")
def toml_unknown_key(ctx: Ctx) -> None:
    ctx.toml(static='rot = "public"')


@case("an unknown table `[statik]`", 2, "unknown key 'statik'")
def toml_unknown_table(ctx: Ctx) -> None:
    ctx.toml('[statik]\nroot = "public"\n')


@case("a value of the wrong type: `root = 5`", 2, "expected a string, got an integer")
def toml_wrong_type(ctx: Ctx) -> None:
    ctx.config.write_text(f'[app]\nproject_id = "{ctx.project_id}"\n[static]\nroot = 5\n')


@case("mosaic.toml that is not UTF-8", 2, "is not UTF-8")
def toml_not_utf8(ctx: Ctx) -> None:
    ctx.config.write_bytes(b'[app]\nname = "caf\xe9"\n')


@case("mosaic.toml nested 5,000 levels deep", 2, "nested too deeply")
def toml_nested_too_deep(ctx: Ctx) -> None:
    ctx.toml("x = " + "[" * 5000 + "]" * 5000 + "\n")


@case("mosaic.toml saved with a UTF-8 byte order mark (Notepad)", 0, '"status": "ok"', SERVED)
def toml_with_a_bom(ctx: Ctx) -> None:
    ctx.config.write_bytes(b"\xef\xbb\xbf" + ctx.config.read_bytes())


@case("a history length that is not one: `[history] keep = -1`", 2,
      "expected a whole number of deploys from 0 to 1000, got -1")  # fmt: skip
def toml_bad_history_keep(ctx: Ctx) -> None:
    ctx.toml("[history]\nkeep = -1\n")


@case("an API key pasted into mosaic.toml", 2, "looks like an API key")
def toml_holds_a_key(ctx: Ctx) -> None:
    ctx.toml(app='token = "mk_pasted_by_mistake"')


@case('a project id that is not one: `project_id = "My App"`', 2, "is not a Mosaic project id")
def toml_bad_project_id(ctx: Ctx) -> None:
    ctx.config.write_text('[app]\nproject_id = "My App"\n[static]\nroot = "public"\n')


@case("no project linked", 2, "no project selected")
def no_project_linked(ctx: Ctx) -> None:
    ctx.config.write_text('[app]\nname = "x"\n[static]\nroot = "public"\n')


@case("a static root that does not exist", 2, "'dist' does not exist")
def root_missing(ctx: Ctx) -> None:
    ctx.config.write_text(ctx.config.read_text().replace('root = "public"', 'root = "dist"'))


@case("a static root outside the project (`../elsewhere`)", 2, "outside the project folder")
def root_outside_project(ctx: Ctx) -> None:
    (ctx.project.parent / "elsewhere").mkdir()
    (ctx.project.parent / "elsewhere" / "index.html").write_text("<p>outside</p>")
    ctx.config.write_text(ctx.config.read_text().replace('"public"', '"../elsewhere"'))


@case("a static root that is a file", 2, "is a file, not a folder")
def root_is_a_file(ctx: Ctx) -> None:
    ctx.config.write_text(ctx.config.read_text().replace('"public"', '"public/index.html"'))


@case("a migrations dir that is a file", 2, "is a file, not a folder")
def migrations_dir_is_a_file(ctx: Ctx) -> None:
    (ctx.project / "schema.sql").write_text("CREATE TABLE t (x int);\n")
    ctx.config.write_text(ctx.config.read_text().replace('"migrations"', '"schema.sql"'))


@case("a migrations dir outside the project (`../shared-sql`)", 2, "outside the project folder")
def migrations_dir_outside_project(ctx: Ctx) -> None:
    (ctx.project.parent / "shared-sql").mkdir()
    (ctx.project.parent / "shared-sql" / "0001_drop.sql").write_text("CREATE TABLE x (y int);\n")
    ctx.config.write_text(ctx.config.read_text().replace('"migrations"', '"../shared-sql"'))


@case("a seed path that does not exist: `[migrations] seed = \"seed.sql\"`", 2,
      "[migrations] seed: 'seed.sql' does not exist")  # fmt: skip
def seed_path_missing(ctx: Ctx) -> None:
    ctx.toml('[migrations]\nseed = "seed.sql"\n')


# -- the static tree -------------------------------------------------------------------------------


@case("an empty static root over a deployed site (a failed build)", 2, "has no files to publish",
      UNCHANGED)  # fmt: skip
def empty_site_over_a_deployed_one(ctx: Ctx) -> None:
    ctx.deploy_first()
    for path in ctx.public.iterdir():
        path.unlink()
    (ctx.public / ".DS_Store").write_bytes(b"\0")


@case("an empty static root, first deploy", 0, '"uploaded": 0')
def empty_site_first_deploy(ctx: Ctx) -> None:
    for path in ctx.public.iterdir():
        path.unlink()


@case("0-byte files, on the site and in storage", 0, '"status": "ok"', SERVED)
def zero_byte_files(ctx: Ctx) -> None:
    for name in ("empty.html", "empty.txt", "empty.json", "fonts/empty.woff2"):
        (ctx.public / name).parent.mkdir(exist_ok=True)
        (ctx.public / name).write_bytes(b"")


@case("a file over the 10 MiB site cap (goes to storage)", 0, '"storage": ["big.png"]', SERVED)
def file_over_the_site_cap(ctx: Ctx) -> None:
    (ctx.public / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(10 * 1024 * 1024))


@case("a file name that is not UTF-8", 2, "is not a valid UTF-8 file name")
def name_not_utf8(ctx: Ctx) -> None:
    with open(os.fsencode(ctx.public) + b"/caf\xe9.html", "wb") as f:
        f.write(b"<p>latin-1</p>")


@case("names with spaces (`my page.html`, `my clip.mp4`)", 0, '"status": "ok"', SERVED)
def names_with_spaces(ctx: Ctx) -> None:
    (ctx.public / "my page.html").write_text("<p>spaces</p>")
    (ctx.public / "sub dir").mkdir()
    (ctx.public / "sub dir" / "a b.css").write_text("p { color: red }")
    (ctx.public / "media files").mkdir()
    (ctx.public / "media files" / "my clip.mp4").write_bytes(os.urandom(5000))


@case("unicode names (`café/naïve ☕.html`, `日本語.txt`)", 0, '"status": "ok"', SERVED)
def unicode_names(ctx: Ctx) -> None:
    (ctx.public / "café").mkdir()
    (ctx.public / "café" / "naïve ☕.html").write_text("<p>☕</p>")
    (ctx.public / "日本語.txt").write_text("こんにちは")
    (ctx.public / "ünï.woff2").write_bytes(os.urandom(300))


@case("names with `#` (`a#b.html`, `#top.css`)", 0, '"status": "ok"', SERVED)
def names_with_hash(ctx: Ctx) -> None:
    (ctx.public / "a#b.html").write_text("<p>hash</p>")
    (ctx.public / "#top.css").write_text("p { margin: 0 }")


@case("names with `?` (`what?.html`, `q?x=1.txt`)", 0, '"status": "ok"', SERVED)
def names_with_question_mark(ctx: Ctx) -> None:
    (ctx.public / "what?.html").write_text("<p>question</p>")
    (ctx.public / "q?x=1.txt").write_text("query-like")


@case("names with `%` (`100%.html`, `%41.html` next to `A.html`)", 0, '"status": "ok"', SERVED)
def names_with_percent(ctx: Ctx) -> None:
    (ctx.public / "100%.html").write_text("<p>percent</p>")
    (ctx.public / "%41.html").write_text("<p>not A</p>")
    (ctx.public / "A.html").write_text("<p>A</p>")
    (ctx.public / "%2e%2e.txt").write_text("dots, encoded")


@case("a case-only rename (`About.html` -> `about.html`)", 0, '"pruned": 1', SERVED)
def case_only_rename(ctx: Ctx) -> None:
    (ctx.public / "About.html").write_text("<p>about</p>")
    ctx.deploy_first()
    (ctx.public / "About.html").rename(ctx.public / "about.html")


@case("two names that differ only in case (`a.html`, `A.html`)", 0, '"status": "ok"', SERVED)
def names_differing_in_case(ctx: Ctx) -> None:
    (ctx.public / "a.html").write_text("<p>lower</p>")
    (ctx.public / "A.html").write_text("<p>upper</p>")


@case("the same name in NFC and NFD forms", 2, "same name once Unicode-normalized")
def same_name_nfc_and_nfd(ctx: Ctx) -> None:
    (ctx.public / unicodedata.normalize("NFC", "é.html")).write_text("<p>nfc</p>")
    (ctx.public / unicodedata.normalize("NFD", "é.html")).write_text("<p>nfd</p>")


@case("a name with a newline in it", 2, "control character")
def name_with_a_newline(ctx: Ctx) -> None:
    many_files(ctx, 10)
    (ctx.public / "line\nbreak.html").write_text("<p>newline</p>")


@case("a name with a backslash (`a\\b.html`)", 2, "backslash")
def name_with_a_backslash(ctx: Ctx) -> None:
    many_files(ctx, 10)
    (ctx.public / "a\\b.html").write_text("<p>backslash</p>")


@case("a path longer than the platform's 1024 characters", 2, "longer than 1024")
def path_too_long(ctx: Ctx) -> None:
    many_files(ctx, 10)
    deep = ctx.public
    for i in range(5):
        deep = deep / (f"{i}" * 220)
    deep.mkdir(parents=True)
    (deep / "deep.html").write_text("<p>deep</p>")


@case(
    "a file name over 255 bytes as published (`\u0915\u093c` x 80: 245 bytes on disk as U+0958, "
    "485 once NFC-normalized)",
    2,
    "over the platform's 255-byte limit",
)
def name_over_255_bytes(ctx: Ctx) -> None:
    many_files(ctx, 10)
    (ctx.public / ("\u0958" * 80 + ".html")).write_text("<p>qa</p>")


@case("a symlink loop (`loop -> .`)", 2, "loops")
def symlink_loop(ctx: Ctx) -> None:
    (ctx.public / "sub").mkdir()
    (ctx.public / "sub" / "loop").symlink_to("..")


@case("a symlink that leaves the static root", 2, "leaves the static root")
def symlink_escape(ctx: Ctx) -> None:
    (ctx.project.parent / "secret.txt").write_text("outside")
    (ctx.public / "leak.txt").symlink_to(ctx.project.parent / "secret.txt")


@case("a dangling symlink", 2, "dangles")
def symlink_dangling(ctx: Ctx) -> None:
    (ctx.public / "gone.html").symlink_to(ctx.public / "never-there.html")


@case("a symlink inside the root to a file and to a folder", 0, '"status": "ok"', SERVED)
def symlinks_inside(ctx: Ctx) -> None:
    (ctx.public / "docs").mkdir()
    (ctx.public / "docs" / "guide.html").write_text("<p>guide</p>")
    (ctx.public / "guide.html").symlink_to("docs/guide.html")
    (ctx.public / "manual").symlink_to("docs")


@case("an unreadable file (permission denied)", 2, "cannot read secret.html: Permission denied")
def unreadable_file(ctx: Ctx) -> None:
    (ctx.public / "secret.html").write_text("<p>secret</p>")
    ctx.deny.append(ctx.public / "secret.html")


@case("an unreadable folder (permission denied)", 2, "cannot read directory private/")
def unreadable_folder(ctx: Ctx) -> None:
    (ctx.public / "private").mkdir()
    (ctx.public / "private" / "a.html").write_text("<p>a</p>")
    ctx.deny.append(ctx.public / "private")


@case("a named pipe (FIFO) in the static root", 0, '"skipped": ["pipe"]', SERVED)
def named_pipe(ctx: Ctx) -> None:
    os.mkfifo(ctx.public / "pipe")


@case("a file called mosaic-assets.json (a reserved name)", 2, "this name is reserved")
def reserved_name(ctx: Ctx) -> None:
    (ctx.public / "mosaic-assets.json").write_text("{}")


@case("an invalid pattern in .mosaicignore (`[z-a]`)", 2, "invalid ignore pattern")
def bad_ignore_pattern(ctx: Ctx) -> None:
    (ctx.public / ".mosaicignore").write_text("drafts/\n[z-a]\n")


@case("`root = \".\"` (the project folder, migrations/ inside it)", 0, '"skipped": ["migrations/"',
      SERVED)  # fmt: skip
def root_is_the_project_folder(ctx: Ctx) -> None:
    ctx.config.write_text(ctx.config.read_text().replace('"public"', '"."'))
    (ctx.migrations / "0001_users.sql").write_text("CREATE TABLE users (pw text);\n")
    (ctx.public / "index.html").rename(ctx.project / "index.html")
    ctx.expected = {
        "index.html": (ctx.project / "index.html").read_bytes(),
        "public/style.css": (ctx.public / "style.css").read_bytes(),
    }


# -- migrations ------------------------------------------------------------------------------------


@case("a migration with a syntax error", 7, 'syntax error at or near "TABEL"')
def migration_syntax_error(ctx: Ctx) -> None:
    (ctx.migrations / "0001_ok.sql").write_text("CREATE TABLE ok (x int);\n")
    (ctx.migrations / "0002_typo.sql").write_text("CREATE TABEL typo (x int);\n")


@case("a migration whose error quotes a huge value (`repeat('x', 1000000)::int`)", 7,
      "[cut: 1,000,041 bytes in all; the first 4,096 characters are shown]")  # fmt: skip
def migration_error_quotes_a_huge_value(ctx: Ctx) -> None:
    (ctx.migrations / "0001_big.sql").write_text("SELECT repeat('x', 1000000)::int;\n")


@case("two migrations with the same version", 7, "version 1 is also used by")
def migration_duplicate_version(ctx: Ctx) -> None:
    (ctx.migrations / "0001_a.sql").write_text("CREATE TABLE a (x int);\n")
    (ctx.migrations / "001_b.sql").write_text("CREATE TABLE b (x int);\n")


@case("an empty migration (only a comment)", 7, "has no SQL statements")
def migration_empty(ctx: Ctx) -> None:
    (ctx.migrations / "0001_todo.sql").write_text("-- to be written\n")


@case("a 0-byte migration", 7, "has no SQL statements")
def migration_zero_bytes(ctx: Ctx) -> None:
    (ctx.migrations / "0001_blank.sql").write_bytes(b"")


@case("a migration without a version (`add_col.sql`)", 7, "not a migration name")
def migration_without_version(ctx: Ctx) -> None:
    (ctx.migrations / "add_col.sql").write_text("CREATE TABLE c (x int);\n")


@case("a migration that is not UTF-8", 7, "not UTF-8 text")
def migration_not_utf8(ctx: Ctx) -> None:
    (ctx.migrations / "0001_latin.sql").write_bytes(b"INSERT INTO t VALUES ('caf\xe9');\n")


@case("`mosaicsync sql -f FILE --json` on a file that is not UTF-8", 2,
      "latin.sql: not UTF-8 text (byte 59, line 2)")  # fmt: skip
def sql_file_not_utf8(ctx: Ctx) -> None:
    (ctx.project / "latin.sql").write_bytes(
        b"CREATE TABLE notes (x text);\nINSERT INTO notes VALUES ('caf\xe9');\n"
    )
    ctx.args = ["sql", "-f", "latin.sql", "--json"]


@case("`COMMIT;` in the middle of a migration", 7, "top-level COMMIT")
def migration_with_commit(ctx: Ctx) -> None:
    (ctx.migrations / "0001_c.sql").write_text("CREATE TABLE c (x int);\nCOMMIT;\nSELECT 1/0;\n")


@case("a migration that fails on the server (rolled back)", 7, "division by zero")
def migration_fails_on_the_server(ctx: Ctx) -> None:
    (ctx.migrations / "0001_half.sql").write_text("CREATE TABLE half (x int);\nSELECT 1/0;\n")


@case(
    "README.md, notes.txt and a .csv among the migrations (ignored)",
    0,
    '"migrations_applied": 1',
    SERVED,
)
def non_sql_files_in_migrations(ctx: Ctx) -> None:
    (ctx.migrations / "README.md").write_text("# how to write migrations\n")
    (ctx.migrations / "notes.txt").write_text("DROP TABLE everything;\n")
    (ctx.migrations / "0002_seed.csv").write_text("a,b\n1,2\n")
    (ctx.migrations / "0001_real.sql").write_text("CREATE TABLE real_one (x int);\n")


@case(
    "a migration that drops a column with rows in it, without a terminal",
    9,
    "drops column public.notes.body (2 rows)",
    UNCHANGED,
)
def migration_destructive(ctx: Ctx) -> None:
    (ctx.migrations / "0001_notes.sql").write_text(
        "CREATE TABLE notes (id int, body text);\nINSERT INTO notes VALUES (1, 'a'), (2, 'b');\n"
    )
    ctx.deploy_first()
    (ctx.migrations / "0002_drop.sql").write_text("ALTER TABLE notes DROP COLUMN body;\n")


@case("`db seed --yes --json` with a seed file that fails on the server", 7,
      'seed.sql:2:21: column "nme" of relation "people" does not exist')  # fmt: skip
def seed_file_sql_error(ctx: Ctx) -> None:
    (ctx.project / "seed.sql").write_text(
        "CREATE TABLE people (name text);\nINSERT INTO people (nme) VALUES ('Ada');\n"
    )
    ctx.toml('[migrations]\nseed = "seed.sql"\n')
    ctx.args = ["db", "seed", "--yes", "--json"]


# -- what the pages hold ---------------------------------------------------------------------------


@case("the API key in use pasted into app.js", 9, "the API key in use (mk_")
def key_in_app_js(ctx: Ctx) -> None:
    (ctx.public / "app.js").write_text(
        f"fetch('/v1/project', {{headers: {{'X-API-Key': '{ctx.key}'}}}});\n"
    )


@case("a private key block in a published text file", 9, "a PEM private key")
def pem_in_a_text_file(ctx: Ctx) -> None:
    (ctx.public / "notes.txt").write_text("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n")


@case("a page with the key, after a good deploy", 9, "app.js:2:", UNCHANGED)
def key_after_a_deploy(ctx: Ctx) -> None:
    ctx.deploy_first()
    (ctx.public / "app.js").write_text(f"// config\nconst key = '{ctx.key}';\n")
    (ctx.public / "style.css").write_text("body { color: blue; }\n")


@case("a binary file named `.html` (not parsed, still published)", 0, "not-checked", SERVED)
def binary_html(ctx: Ctx) -> None:
    (ctx.public / "blob.html").write_bytes(b"\x00\x01\x02<html>\xff\xfe" * 10)


@case("a page that is not UTF-8 (not parsed, still published)", 0, "not UTF-8", SERVED)
def latin1_page(ctx: Ctx) -> None:
    (ctx.public / "old.html").write_bytes(b"<p>caf\xe9</p><img src='missing.png'>\n")


@case("a reference above the site root (`../../x.css`)", 0, "above the site root", SERVED)
def reference_above_root(ctx: Ctx) -> None:
    (ctx.public / "up.html").write_text('<link rel="stylesheet" href="../../x.css">\n')


# -- the platform and the network ------------------------------------------------------------------


@case("an API URL that answers an HTML page (a captive portal)", 5, "a body that is not JSON")
def api_answers_html(ctx: Ctx) -> None:
    ctx.fake(200, b"<html><body>Please sign in to the Wi-Fi</body></html>", "text/html")


@case("an API that answers garbage", 5, "a body that is not JSON")
def api_answers_garbage(ctx: Ctx) -> None:
    ctx.fake(200, b"\x00\xff{{not json", "application/json")


@case("an API that answers an empty body", 5, "a body that is not JSON")
def api_answers_empty(ctx: Ctx) -> None:
    ctx.fake(200, b"", "application/json")


@case("an API that answers JSON of another shape", 5, "the answer has no 'project_id'")
def api_answers_other_json(ctx: Ctx) -> None:
    ctx.fake(200, b'{"message": "hello from some other service"}', "application/json")


@case("the key rotated mid-deploy (401 after 20 uploads)", 3, "rotate every 30 days", CONSISTENT)
def key_rotated_mid_deploy(ctx: Ctx) -> None:
    many_files(ctx)
    uploads: list[int] = []

    def rotate(request: Request) -> Reply | str:
        if request.path.endswith("/files") and request.method == "POST":
            uploads.append(1)
        if len(uploads) > 20:
            return Reply(401, b'{"success": false, "error": "invalid or expired API key"}')
        return "pass"

    ctx.proxy(rotate)


@case("402 Payment Required on a storage upload", 3, "plan limit")
def payment_required(ctx: Ctx) -> None:
    (ctx.public / "clip.mp4").write_bytes(os.urandom(2000))

    def pay(request: Request) -> Reply | str:
        if request.path.endswith("/storage/upload-url"):
            return Reply(402, b'{"success": false, "error": "upgrade to upload more"}')
        return "pass"

    ctx.proxy(pay)


@case("403 Forbidden for the key", 3, "forbidden for this key")
def forbidden(ctx: Ctx) -> None:
    ctx.proxy(lambda r: Reply(403, b'{"success": false, "error": "forbidden for this key"}'))


@case("413 for one file midway (a cap lower than documented)", 5, "over the limit", CONSISTENT)
def too_large_midway(ctx: Ctx) -> None:
    many_files(ctx, 30)
    (ctx.public / "zz-huge.html").write_text("<p>" + "x" * 5000 + "</p>")

    def cap(request: Request) -> Reply | str:
        if request.path.endswith("/files") and b'"zz-huge.html"' in request.body:
            return Reply(413, b'{"success": false, "error": "zz-huge.html is over the limit"}')
        return "pass"

    ctx.proxy(cap)


@case("a storage file that grows after its size was sent, before it is read", 2,
      "clip.mp4 changed while it was uploaded", CONSISTENT)  # fmt: skip
def storage_file_grows_while_uploaded(ctx: Ctx) -> None:
    many_files(ctx, 5)
    (ctx.public / "a-first.woff2").write_bytes(os.urandom(3000))
    (ctx.public / "media").mkdir()
    (ctx.public / "media" / "clip.mp4").write_bytes(os.urandom(2000))
    ctx.args = ["deploy", "--json", "--concurrency", "1"]

    def grow(request: Request) -> Reply | str:
        # The presign carries the size the scan measured; the build then appends to the file.
        if request.path.endswith("/storage/upload-url") and b"clip.mp4" in request.body:
            with open(ctx.public / "media" / "clip.mp4", "ab") as f:
                f.write(b"appended by a build")
        return "pass"

    ctx.proxy(grow)


@case("a page edited after it was checked, before it is uploaded", 2,
      "zz-late.html changed while it was uploaded", CONSISTENT)  # fmt: skip
def page_edited_while_deployed(ctx: Ctx) -> None:
    many_files(ctx, 5)
    (ctx.public / "zz-late.html").write_text("<p>as checked</p>")
    ctx.args = ["deploy", "--json", "--concurrency", "1"]

    def edit(request: Request) -> Reply | str:
        # The first upload: the checks are done, and the page has not been read yet.
        if request.path.endswith("/files") and b'"page000.html"' in request.body:
            (ctx.public / "zz-late.html").write_text("<p>edited since</p>")
        return "pass"

    ctx.proxy(edit)


def test_a_key_pasted_into_a_page_after_the_checks_is_never_published(ctx: Ctx) -> None:
    many_files(ctx, 5)
    (ctx.public / "zz-late.html").write_text("<p>as checked</p>")

    def paste(request: Request) -> Reply | str:
        if request.path.endswith("/files") and b'"page000.html"' in request.body:
            (ctx.public / "zz-late.html").write_text(f"<script>const k = '{KEY_A}'</script>")
        return "pass"

    ctx.proxy(paste)
    out = ctx.run(["deploy", "--json", "--concurrency", "1"])
    assert out.returncode == 2, out.stdout + out.stderr
    assert "zz-late.html changed while it was uploaded" in error_text(out)
    state = platform_state(ctx.server, ctx.project_id, ctx.owner_key)
    assert "zz-late.html" not in state.site and "zz-late.html" not in state.manifest
    # The next run checks what is there now, and refuses it.
    again = ctx.run(["deploy", "--json"])
    assert again.returncode != 0 and "zz-late.html" in again.stdout + again.stderr
    assert KEY_A not in again.stdout + again.stderr


@case("a storage file that shrinks after its size was sent, before it is read", 2,
      "clip.mp4 changed while it was uploaded", CONSISTENT)  # fmt: skip
def storage_file_shrinks_while_uploaded(ctx: Ctx) -> None:
    many_files(ctx, 5)
    (ctx.public / "clip.mp4").write_bytes(os.urandom(2000))

    def shrink(request: Request) -> Reply | str:
        if request.path.endswith("/storage/upload-url") and b"clip.mp4" in request.body:
            os.truncate(ctx.public / "clip.mp4", 500)
        return "pass"

    ctx.proxy(shrink)


@case("connection refused (nothing listens)", 6, "cannot connect")
def connection_refused(ctx: Ctx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx.api_url = f"http://127.0.0.1:{port}/v1/project"


@case("a host name that does not resolve (`mosaic.invalid`)", 6, "cannot connect")
def dns_failure(ctx: Ctx) -> None:
    ctx.api_url = "https://mosaic.invalid/v1/project"


@case("an API URL that is not http(s) (`ftp://...`)", 2, "is not an http(s) URL")
def api_url_not_http(ctx: Ctx) -> None:
    ctx.api_url = "ftp://127.0.0.1/v1/project"


@case("no API key at all", 3, "no API key for")
def no_api_key(ctx: Ctx) -> None:
    ctx.key = ""


@case("an API key pasted with a typographic dash (U+2013)", 3, "non-ASCII character")
def api_key_not_ascii(ctx: Ctx) -> None:
    ctx.key = "mk_pasted\u2013from_a_word_processor"


@case("a wrong API key", 3, "rotate every 30 days")
def wrong_api_key(ctx: Ctx) -> None:
    ctx.key = "mk_not_a_key_of_this_platform"


@case("another account's project", 4, "not found")
def another_accounts_project(ctx: Ctx) -> None:
    ctx.owner_key = KEY_B
    other = create_project(ctx.server, "someone else's", key=KEY_B)
    ctx.project_id = other
    ctx.toml()


@case("a hash cache that cannot be written (`.mosaicsync` is a file)", 0, '"status": "ok"', SERVED)
def cache_not_writable(ctx: Ctx) -> None:
    (ctx.project / ".mosaicsync").write_text("not a folder")


@case("a full disk for diagnostics (XDG_CACHE_HOME is a file)", 2, "invalid TOML")
def diagnostics_not_writable(ctx: Ctx) -> None:
    (ctx.project.parent / "full").write_text("")
    ctx.env["XDG_CACHE_HOME"] = str(ctx.project.parent / "full")
    ctx.config.write_text("[app\n")


# -- other commands --------------------------------------------------------------------------------


@case("storage put with --name holding a folder name over 255 bytes", 5, "255-byte limit")
def storage_put_name_over_255_bytes(ctx: Ctx) -> None:
    (ctx.project / "clip.mp4").write_bytes(b"\x00" * 64)
    ctx.args = ["storage", "put", "clip.mp4", "--name", "\u00e9" * 130 + "/clip.mp4", "--json"]


# A name the shell passes as bytes that are not UTF-8: Python reads them as lone surrogates.
NOT_UTF8_NAME = "My\udced\udca0\udc80App"


@case("projects create with a name that is not UTF-8 (bytes ED A0 80)", 2, "not UTF-8 text")
def project_name_not_utf8(ctx: Ctx) -> None:
    ctx.args = ["projects", "create", NOT_UTF8_NAME, "--json"]


@case("rollback to a deploy id that is not in the history", 10, "no deploy #999", UNCHANGED)
def rollback_unknown_id(ctx: Ctx) -> None:
    ctx.deploy_first()
    ctx.args = ["rollback", "999", "--yes", "--json"]


@case("rollback with no terminal and no --yes", 2, "so pass --yes", UNCHANGED)
def rollback_without_yes(ctx: Ctx) -> None:
    ctx.deploy_first()
    (ctx.public / "index.html").write_text("<!doctype html><p>second</p>")
    ctx.deploy_first()
    ctx.args = ["rollback", "--json"]


@case("rollback to an unknown id with no terminal and no --yes: the id is the error",
      10, "restorable: #1", UNCHANGED)  # fmt: skip
def rollback_unknown_id_without_yes(ctx: Ctx) -> None:
    ctx.deploy_first()
    ctx.args = ["rollback", "999", "--json"]


@case("rollback with history switched off (`[history] keep = 0`)", 2, "deploy history is off",
      UNCHANGED)  # fmt: skip
def rollback_history_off(ctx: Ctx) -> None:
    ctx.toml("[history]\nkeep = 0\n")
    ctx.deploy_first()
    ctx.args = ["rollback", "--yes", "--json"]


@case("a preview name with a space (`preview 'my feature'`)", 2, "not a valid preview name")
def preview_bad_name(ctx: Ctx) -> None:
    ctx.args = ["preview", "my feature", "--json"]


# -- the walk --------------------------------------------------------------------------------------


@pytest.fixture
def ctx(local_server: LocalServer, tmp_path: Path) -> Iterator[Ctx]:
    project_id = create_project(local_server, "bad input")
    project = write_project(tmp_path / "site", project_id)
    (project / "public" / "index.html").write_text("<!doctype html><p>home</p>\n")
    (project / "public" / "style.css").write_text("body { margin: 0 }\n")
    with contextlib.ExitStack() as stack:
        yield Ctx(local_server, project, project_id, stack, api_url=local_server.api)


def error_text(out: subprocess.CompletedProcess[str]) -> str:
    """The JSON error (message and hint) when there is one, else everything printed."""
    try:
        body = json.loads(out.stdout)
    except ValueError:
        return out.stdout + out.stderr
    if body.get("status") == "error":
        return f"{body['error']['error']}\n{body['error'].get('hint')}"
    return out.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx) -> None:
    case.arrange(ctx)
    out = ctx.run()
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == case.exit_code, out.stdout + out.stderr
    assert case.message in error_text(out), out.stdout + out.stderr
    if out.returncode:
        assert json.loads(out.stdout)["error"]["exit_code"] == case.exit_code
    state = platform_state(ctx.server, ctx.project_id, ctx.owner_key)
    if case.outcome == NOTHING:
        assert state.empty, state
    elif case.outcome == UNCHANGED:
        assert ctx.before is not None
        assert (state.site, state.storage, state.manifest) == (
            ctx.before.site,
            ctx.before.storage,
            ctx.before.manifest,
        )
    elif case.outcome == CONSISTENT:
        for path, row in state.manifest.items():
            stored = state.site.get(path) if row["target"] == "site" else state.storage.get(path)
            assert stored == (row["uploaded_sha256"] or row["sha256"] if row["target"] == "site"
                              else int(row["size"])), path  # fmt: skip
        assert all(m["state"] == "applied" for m in state.migrations)
        ctx.api_url, ctx.key = ctx.server.api, KEY_A
        again = ctx.run()
        assert again.returncode == 0, again.stdout + again.stderr
        assert_site_equals(ctx.server, ctx.project_id, ctx.public, {}, ctx.server.base_url)
    else:
        served = ctx.expected or ctx.public
        assert_site_equals(ctx.server, ctx.project_id, served, {}, ctx.server.base_url)


def test_a_project_name_that_is_not_utf8_creates_no_project(ctx: Ctx) -> None:
    with ctx.server.client() as api:
        before = api.get("/projects").json()["projects"]
        out = ctx.run(["projects", "create", NOT_UTF8_NAME])
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "'name'" in out.stderr and "LANG" in out.stderr, out.stderr
        assert api.get("/projects").json()["projects"] == before


def test_the_catalogue_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.outcome for c in CASES} == set(OUTCOMES)
    errors = sum(1 for c in CASES if c.exit_code)
    report("bad inputs", cases=len(CASES), errors=errors, not_errors=len(CASES) - errors)


# -- the docs table --------------------------------------------------------------------------------


def render_doc() -> str:
    """docs/bad-inputs.md, generated from `CASES`."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Bad inputs",
        "",
        "What `mosaicsync deploy` (and the storage put and projects create commands) does with",
        "inputs a careful user might try. Generated from",
        "`tests/test_bad_inputs.py` (`python -m tests.test_bad_inputs`), whose one parametrized",
        "test runs every row against the local platform and checks the exit code, the message",
        "and what is left on the platform.",
        "",
        f"{len(CASES)} cases. Errors leave nothing behind, or, when they strike midway, only",
        "files the manifest records, so the next deploy finishes the job; the inputs marked",
        "*not an error* deploy and are served byte for byte (names fetched with proper URL",
        "quoting).",
        "",
        "Bodies only a raw API call can send get a 400 from the local platform that names the",
        'field, never a 500 (`tests/test_local_hardening.py`): a lone surrogate (`"\\ud800"`) in',
        "any string, an integer of more than 4,300 digits, a file or object name over 255 bytes.",
        "",
        "| case | input | exit | message contains | left on the platform |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        lines.append(
            f"| `{c.id}` | {cell(c.input)} | {c.exit_code} | `{cell(c.message)}` "
            f"| {OUTCOMES[c.outcome]} |"
        )
    return "\n".join(lines) + "\n"


def test_docs_table_is_in_sync() -> None:
    assert DOC.read_text() == render_doc(), "run `python -m tests.test_bad_inputs` to regenerate"


def test_readme_counts_the_cases() -> None:
    errors = sum(1 for c in CASES if c.exit_code)
    line = f"{len(CASES)} cases, {errors} errors and {len(CASES) - errors} unusual but valid inputs"
    assert line in (ROOT / "README.md").read_text()


if __name__ == "__main__":
    DOC.write_text(render_doc())
    print(f"wrote {DOC} ({len(CASES)} cases)")
