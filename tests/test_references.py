"""The broken-reference check: extracting local references, resolving them, bad input (pure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mosaicsync import findings, ignore, scan
from mosaicsync.findings import Finding
from mosaicsync.references import (
    MAX_CHECKED_BYTES,
    Ref,
    check,
    decode,
    extract,
    is_checked,
    read_text,
)

# -- extract ----------------------------------------------------------------------------------


def values(text: str, path: str = "index.html") -> list[str]:
    return [ref.value for ref in extract(text, path)]


def test_local_references_of_every_kind_with_line_and_column() -> None:
    html = (
        "<!doctype html>\n"
        '<link rel="icon" href="/favicon.ico"><link rel=manifest href="site.webmanifest">\n'
        '  <img src="img/a.png" srcset="img/a-1x.png 1x, img/a-2x.png 2x">\n'
        '<video poster="p.jpg"></video>\n'
        "<style>@import 'base.css'; .h{background:url(\"hero.avif\")}</style>\n"
        "<div style=\"background:url('bg.png')\"></div>\n"
        '<a href="docs/?q=1#top">docs</a>\n'
    )
    assert extract(html, "index.html") == [
        Ref(2, 24, "/favicon.ico"),
        Ref(2, 63, "site.webmanifest"),
        Ref(3, 13, "img/a.png"),
        Ref(3, 32, "img/a-1x.png"),
        Ref(3, 49, "img/a-2x.png"),
        Ref(4, 16, "p.jpg"),
        Ref(5, 17, "base.css"),
        Ref(5, 47, "hero.avif"),
        Ref(6, 29, "bg.png"),
        Ref(7, 10, "docs/?q=1#top"),
    ]


def test_external_and_same_page_references_are_left_out() -> None:
    html = (
        '<a href="https://example.com/x.png"></a><img src="//cdn.example/a.png">'
        '<img src="data:image/png;base64,AAAA"><a href="mailto:a@b.c"></a><a href="#top"></a>'
        '<a href="javascript:void(0)"></a><a href=""></a><a href="?page=2"></a>'
        '<a href="tel:+1"></a><a href="http://[::1"></a><img src="local.png">'
    )
    assert values(html) == ["local.png"]


def test_nothing_inside_scripts_comments_or_raw_text() -> None:
    html = (
        '<script>var s = "<img src=a.png>";</script><!-- <img src="b.png"> -->'
        '<textarea><img src="c.png"></textarea><p>src="d.png" url(e.png)</p>'
        '<img src="f.png">'
    )
    assert values(html) == ["f.png"]


def test_css_files_and_escapes() -> None:
    css = '@import "reset.css";\n@import url(theme.css) screen;\n.a{background:url(i\\2e png)}'
    assert extract(css, "css/site.css") == [
        Ref(1, 10, "reset.css"),
        Ref(2, 13, "theme.css"),
        Ref(3, 19, "i.png"),
    ]
    assert extract('<img src="a&amp;b.png">', "x.html") == [Ref(1, 11, "a&b.png")]


def test_only_html_and_css_are_checked() -> None:
    assert is_checked("index.html") and is_checked("css/site.CSS")
    assert not is_checked("app.js") and not is_checked("logo.png")


# -- check ------------------------------------------------------------------------------------


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A static root with a case-only name, an ignored file, ignored and skipped folders."""
    root = tmp_path / "public"
    for rel in (
        "index.html",
        "logo.png",
        "docs/index.html",
        "docs/x.html",
        "docs/notes-private.html",
        "drafts/d.html",
        "node_modules/lib/a.js",
        ".env",
        "fonts/brand.woff2",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / ".mosaicignore").write_text("# drafts\ndrafts/\n*-private.html\n")
    return root


def run(root: Path, pages: dict[str, str], *, storage: tuple[str, ...] = ()) -> list[Finding]:
    rules = ignore.load_ignore_rules(root, root)
    result = scan.scan(root, rules)
    published = [f.path for f in result.files if f.path not in storage]
    refs = {path: extract(text, path) for path, text in pages.items()}
    return check(refs, [*published, *storage], result.skipped, rules)


def test_the_acceptance_case_names_each_reason(site: Path) -> None:
    found = run(
        site,
        {
            "index.html": '<img src="Logo.png">',
            "docs/x.html": '<a href="notes-private.html">n</a>',
        },
    )
    assert [(f.where, f.kind, f.severity) for f in found] == [
        ("docs/x.html:1:10", findings.BROKEN_REFERENCE, "warning"),
        ("index.html:1:11", findings.BROKEN_REFERENCE, "warning"),
    ]
    private, logo = found
    assert "excluded by an ignore rule" in private.message
    assert ".mosaicignore: *-private.html" in private.message
    assert "`Logo.png` is published as `logo.png`; web servers are case-sensitive" in logo.message


def test_published_targets_are_fine_relative_absolute_query_and_fragment(site: Path) -> None:
    page = (
        '<img src="logo.png?v=3#x"><img src="/logo.png"><img src="./docs/../logo.png">'
        '<a href="docs/x.html#top"></a><a href="%6Cogo.png"></a>'
        '<img srcset="logo.png 1x, /logo.png 2x">'
        "<style>@font-face{src:url(fonts/brand.woff2)}</style>"
        "<script src=mosaic-assets.json></script>"
    )
    assert run(site, {"index.html": page}) == []
    assert run(site, {"docs/x.html": '<a href="../logo.png"></a><a href="x.html"></a>'}) == []
    (control,) = run(site, {"index.html": page + '<img src="logo.png.bak">'})
    assert control.message == "broken reference `logo.png.bak`: no file `logo.png.bak` is published"


def test_files_routed_to_storage_count_as_published(site: Path) -> None:
    page = "<style>@font-face{src:url('/media/clip.mp4')}</style>"
    assert run(site, {"index.html": page}, storage=("media/clip.mp4",)) == []
    assert len(run(site, {"index.html": page})) == 1


def test_folders_serve_their_index_with_or_without_the_slash(site: Path) -> None:
    ok = '<a href="docs/"></a><a href="docs"></a><a href="/"></a><a href="/docs"></a>'
    assert run(site, {"index.html": ok}) == []
    assert run(site, {"docs/x.html": '<a href=".">a</a><a href="..">b</a><a href="./">c</a>'}) == []
    found = run(site, {"index.html": '<a href="fonts/"></a><a href="fonts"></a>'})
    assert [f.message for f in found] == [
        "broken reference `fonts/`: no file `fonts/index.html` is published",
        "broken reference `fonts`: no file `fonts` is published",
    ]


def test_missing_files_in_html_and_css(site: Path) -> None:
    found = run(
        site,
        {
            "index.html": '<p>\n  <img srcset="logo.png 1x, img/gone@2x.png 2x">\n</p>',
            "css/site.css": "a{b:url(../img/x.png)}\n@import 'reset.css';",
        },
    )
    assert [(f.where, f.message) for f in found] == [
        ("css/site.css:1:9", "broken reference `../img/x.png`: no file `img/x.png` is published"),
        ("css/site.css:2:10", "broken reference `reset.css`: no file `css/reset.css` is published"),
        ("index.html:2:29", "broken reference `img/gone@2x.png`: no file `img/gone@2x.png` is "
         "published"),
    ]  # fmt: skip
    assert all(f.hint for f in found)


def test_inside_an_ignored_or_skipped_folder(site: Path) -> None:
    found = run(
        site,
        {"index.html": '<script src="node_modules/lib/a.js"></script><a href="drafts/d.html">'},
    )
    node, drafts = found
    assert node.message == (
        "broken reference `node_modules/lib/a.js`: `node_modules/lib/a.js` is inside "
        "`node_modules/`, a folder that is not published (default: node_modules/)"
    )
    assert "drafts/" in drafts.message and "(.mosaicignore: drafts/)" in drafts.message
    assert "remove or narrow that rule" in drafts.hint


def test_a_file_that_may_hold_credentials_is_never_published(site: Path) -> None:
    (found,) = run(site, {"index.html": '<a href="/.env">config</a>'})
    assert found.message == (
        "broken reference `/.env`: `.env` is never published: it may hold credentials "
        "(default: .env*)"
    )
    assert "x" not in found.message.replace(".env", "")  # the file's content never shows


def test_a_rule_names_a_file_the_scan_did_not_see(site: Path) -> None:
    (found,) = run(site, {"index.html": '<a href="docs/other-private.html">'})
    assert "excluded by an ignore rule (.mosaicignore: *-private.html)" in found.message


def test_above_the_site_root_is_said_apart_from_missing(site: Path) -> None:
    (found,) = run(site, {"docs/x.html": '<img src="../../logo.png">'})
    assert (
        found.message == "broken reference `../../logo.png`: it goes above the site root with `..`"
    )
    assert "`/logo.png`" in found.hint
    assert run(site, {"index.html": '<img src="/../x.png">'})[0].message.endswith(
        "it goes above the site root with `..`"
    )


def test_a_backslash_is_named(site: Path) -> None:
    (found,) = run(site, {"docs/x.html": '<img src="..\\logo.png">'})
    assert found.message.endswith(
        "it holds a backslash; browsers read it as `/`, but no published name has one"
    )
    assert "`../logo.png`" in found.hint


def test_a_case_difference_in_a_folder_name(site: Path) -> None:
    (found,) = run(site, {"index.html": '<a href="Docs/">x</a>'})
    assert "`Docs/index.html` is published as `docs/index.html`" in found.message


def test_messages_drop_the_query_and_escape_control_characters(site: Path) -> None:
    (found,) = run(site, {"index.html": '<img src="gone.png?token=abc123">'})
    assert "abc123" not in found.message and "`gone.png`" in found.message
    (found,) = run(site, {"index.html": '<img src="a\x01b.png">'})
    assert "\x01" not in found.message and "a\\x01b.png" in found.message


# -- bad input --------------------------------------------------------------------------------


def test_binary_non_utf8_and_utf16_files_are_not_checked_with_a_reason() -> None:
    binary = decode(b"<html>\x00\x01\x02", "a.html")
    latin1 = decode("<p>café</p>".encode("latin-1"), "b.html")
    utf16 = decode("<p>x</p>".encode("utf-16"), "c.css")
    assert isinstance(binary, Finding) and isinstance(latin1, Finding)
    assert isinstance(utf16, Finding)
    assert binary.message == "not checked for broken references: binary (it holds NUL bytes)"
    assert latin1.message == "not checked for broken references: not UTF-8 (byte 0xe9 at offset 6)"
    assert utf16.message == "not checked for broken references: not UTF-8 (it is UTF-16)"
    for finding in (binary, latin1, utf16):
        assert finding.kind == findings.SKIPPED and finding.severity == "warning"
        assert finding.hint
    assert decode("\ufeff<p>é</p>".encode(), "d.html") == "<p>é</p>"


def test_a_file_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "bundle.css"
    with big.open("wb") as out:  # 50 MB, sparse
        out.truncate(50 * 1024 * 1024)

    def refuse(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    got = read_text(big, "bundle.css")
    assert isinstance(got, Finding)
    assert got.message == "not checked for broken references: over 5 MB"
    assert MAX_CHECKED_BYTES == 5 * 1024 * 1024
    assert isinstance(decode(b"a" * 11, "x.css", limit=10), Finding)


def test_read_text_reads_a_page_and_says_why_when_it_cannot(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_bytes(b'<img src="a.png">')
    assert read_text(page, "index.html") == '<img src="a.png">'
    got = read_text(tmp_path, "folder.html")  # a folder: cannot be read as a file
    assert isinstance(got, Finding) and got.message.startswith(
        "not checked for broken references: cannot be read"
    )


def test_a_minified_page_at_the_limit_parses(tmp_path: Path) -> None:
    chunk = '<div><img src="img/a.png" alt="x"><a href="p.html">t</a></div>'
    page = chunk * (1024 * 1024 // len(chunk))  # 1 MB on one line
    refs = extract(page, "index.html")
    assert len(refs) == 2 * (1024 * 1024 // len(chunk))
    assert (
        refs[-1].line == 1 and refs[-1].column == len(page) - len(chunk) + chunk.index("p.html") + 1
    )


def test_one_reference_is_judged_from_each_page_folder(tmp_path: Path) -> None:
    """The same relative reference reaches a file from one folder and nothing from another:
    each page gets its own verdict, whatever was judged before it."""
    rules = ignore.load_ignore_rules(tmp_path, tmp_path)
    published = ["a/x.html", "a/y.html", "a/img.png", "b/z.html"]
    refs = {p: [Ref(1, 1, "img.png")] for p in ("a/x.html", "a/y.html", "b/z.html")}
    found = check(refs, published, [], rules)
    assert [(f.file, f.kind) for f in found] == [("b/z.html", findings.BROKEN_REFERENCE)]


def test_checking_known_references_and_publishing_a_script_load_no_page_parser(
    tmp_path: Path,
) -> None:
    """A deploy of one changed script checks the pages' cached references and sends the script
    as it is: neither needs the HTML and CSS parsers (~17 ms to import)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mosaicsync import ignore, preflight, upload\n"
        "from mosaicsync.references import Ref, check, is_checked\n"
        f"root = Path({str(tmp_path)!r})\n"
        "rules = ignore.load_ignore_rules(root, root)\n"
        "refs = {'index.html': [Ref(1, 1, 'app.js'), Ref(2, 1, 'gone.png')]}\n"
        "found = check(refs, ['index.html', 'app.js', 'font.woff2'], [], rules)\n"
        "assert [f.file for f in found] == ['index.html'], found\n"
        "assert is_checked('index.html') and not is_checked('app.js')\n"
        "assert upload.sent_bytes('app.js', b'x()', {'font.woff2': 'https://s/f'}) == b'x()'\n"
        "print(sorted({'mosaicsync.rewrite', 'tinycss2', 'html.parser'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
