"""Rewriting HTML and CSS references to storage-routed files (pure)."""

from __future__ import annotations

import itertools
import re
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaicsync import rewrite as rewrite_module
from mosaicsync.rewrite import references, rewrite
from mosaicsync.sitepaths import resolve

URLS = {
    "fonts/brand.woff2": "http://s.example/p/fonts/brand.woff2",
    "video/intro.mp4": "http://s.example/p/video/intro.mp4",
}


def test_resolve_relative_absolute_and_outside() -> None:
    assert resolve("../fonts/brand.woff2", "css/site.css") == "fonts/brand.woff2"
    assert resolve("/fonts/brand.woff2?v=2#x", "a/b/index.html") == "fonts/brand.woff2"
    assert resolve("brand.woff2", "fonts/x.css") == "fonts/brand.woff2"
    assert resolve("https://cdn.example/x.js", "index.html") is None
    assert resolve("//cdn.example/x.js", "index.html") is None
    assert resolve("../../x", "a/index.html") is None
    assert resolve("#top", "index.html") is None
    assert resolve("data:image/png;base64,xx", "index.html") is None


def test_css_url_forms() -> None:
    css = (
        "@font-face{src:url('../fonts/brand.woff2') format('woff2')}\n"
        'a{background:url("../img/a.png")} b{background:url( ../fonts/brand.woff2 )}'
    )
    out = rewrite(css, "css/site.css", URLS)
    assert out.text.count("http://s.example/p/fonts/brand.woff2") == 2
    assert "../img/a.png" in out.text
    assert out.references == ("fonts/brand.woff2",)


def test_html_attributes_srcset_and_inline_styles() -> None:
    html = (
        '<video src="video/intro.mp4" poster="img/p.png"></video>'
        '<img srcset="video/intro.mp4 2x, img/a.png 1x">'
        "<style>@font-face{src:url(/fonts/brand.woff2)}</style>"
        "<div style=\"background:url('fonts/brand.woff2')\"></div>"
        '<a href="page.html">x</a>'
    )
    out = rewrite(html, "index.html", URLS)
    assert 'src="http://s.example/p/video/intro.mp4"' in out.text
    assert 'poster="img/p.png"' in out.text
    assert "http://s.example/p/video/intro.mp4 2x, img/a.png 1x" in out.text
    assert "url(http://s.example/p/fonts/brand.woff2)" in out.text
    assert "url('http://s.example/p/fonts/brand.woff2')" in out.text
    assert 'href="page.html"' in out.text
    assert out.references == ("fonts/brand.woff2", "video/intro.mp4")


def test_nothing_to_do_without_storage_files() -> None:
    html = '<img src="a.png">'
    assert rewrite(html, "index.html", {}).text == html


@given(st.text(max_size=200))
def test_text_without_storage_references_is_unchanged(text: str) -> None:
    assert rewrite(text, "index.html", {"zz/never.bin": "http://x"}).text == text


FONT = {"font.woff2": "http://s.example/p/font.woff2"}


def test_script_comment_and_text_stay_byte_identical() -> None:
    html = (
        '<script>const u = "font.woff2"; el.innerHTML = \'<img src="font.woff2">\'</script>'
        '<!-- <link href="font.woff2"> src="font.woff2" -->'
        '<pre>src="font.woff2"</pre>'
        '<textarea><img src="font.woff2"></textarea>'
        '<title>src="font.woff2"</title>'
        "<p>url(font.woff2) src='font.woff2'</p>"
        "<style>/* url(font.woff2) */</style>"
    )
    out = rewrite(html, "index.html", FONT)
    assert out.text == html
    assert out.references == ()


def test_markup_the_browser_reads_as_script_or_comment_is_left_alone() -> None:
    # Inside `<!--` a script only ends after `-->`; `-- >` does not close a comment.
    html = (
        '<script><!-- document.write("<script></script>"); <img src="font.woff2"> --></script>'
        '<!-- a -- > <img src="font.woff2"> -->'
        "<style>a{}</style ><p>url(font.woff2)</p>"
    )
    assert rewrite(html, "index.html", FONT).text == html


def test_unquoted_attributes_are_rewritten_and_quoted_when_needed() -> None:
    html = "<video src=clip.mp4 poster=p.png></video><img src=a.avif alt=x>"
    urls = {"clip.mp4": "http://s.example/p/clip.mp4", "a.avif": "http://s/a.avif?sig=1&t=2"}
    out = rewrite(html, "index.html", urls)
    assert out.text == (
        "<video src=http://s.example/p/clip.mp4 poster=p.png></video>"
        '<img src="http://s/a.avif?sig=1&amp;t=2" alt=x>'
    )
    assert out.references == ("a.avif", "clip.mp4")


def test_css_import_and_image_set() -> None:
    css = (
        '@import "big.css";\n@import url(big.css) screen;\n@IMPORT url("big.css");\n'
        '.h{background-image:image-set("hero.avif" 1x, url(hero.avif) 2x);'
        "background-image:-webkit-image-set('hero.avif' 1x)}\n"
        '/* url(hero.avif) */ .q{content:"hero.avif"}'
    )
    urls = {"css/big.css": "http://s/big.css", "css/hero.avif": "http://s/hero.avif"}
    out = rewrite(css, "css/site.css", urls)
    assert out.text == (
        '@import "http://s/big.css";\n@import url(http://s/big.css) screen;\n'
        '@IMPORT url("http://s/big.css");\n'
        '.h{background-image:image-set("http://s/hero.avif" 1x, url(http://s/hero.avif) 2x);'
        "background-image:-webkit-image-set('http://s/hero.avif' 1x)}\n"
        '/* url(hero.avif) */ .q{content:"hero.avif"}'
    )
    assert out.references == ("css/big.css", "css/hero.avif")


def test_image_set_in_style_blocks_and_attributes() -> None:
    html = (
        '<style>.h{background:-webkit-image-set("a.avif" 1x)}</style>'
        "<div style='background:image-set(\"a.avif\" 1x)'></div>"
    )
    out = rewrite(html, "index.html", {"a.avif": "http://s/a.avif"})
    assert out.text == (
        '<style>.h{background:-webkit-image-set("http://s/a.avif" 1x)}</style>'
        "<div style='background:image-set(\"http://s/a.avif\" 1x)'></div>"
    )


def test_entities_resolve_for_matching_and_replacements_are_escaped() -> None:
    urls = {"a.avif": "http://s/a.avif?x=1&y='2'", "b.avif": "http://s/b.avif"}
    html = (
        '<img src="a.avif?v=1&amp;w=2">'
        "<img src='&#97;.avif'>"
        '<div style="background:url(&quot;b.avif&quot;)"></div>'
        '<img src="%62.avif">'
    )
    out = rewrite(html, "index.html", urls)
    assert out.text == (
        "<img src=\"http://s/a.avif?x=1&amp;y='2'\">"
        "<img src='http://s/a.avif?x=1&amp;y=&#39;2&#39;'>"
        '<div style="background:url(&quot;http://s/b.avif&quot;)"></div>'
        '<img src="http://s/b.avif">'
    )


def test_css_escapes_are_read_and_replacements_stay_valid() -> None:
    css = ".a{background:url(\\61 .avif)} .b{background:url('a\\2e avif')}"
    out = rewrite(css, "site.css", {"a.avif": "http://s/a (1).avif"})
    assert out.text == (
        ".a{background:url(http://s/a\\20 \\28 1\\29 .avif)}"
        " .b{background:url('http://s/a (1).avif')}"
    )


def test_names_are_case_insensitive_and_more_url_attributes() -> None:
    html = (
        '<IMG SRC="a.avif"><Video Poster=a.avif></Video>'
        '<object data="a.avif"></object><div data="a.avif"></div>'
        '<img data-src="a.avif" data-srcset="a.avif 2x">'
        '<link rel=preload as=image imagesrcset="a.avif 1x, b.png 2x">'
        '<svg><image xlink:href="a.avif"/></svg>'
    )
    out = rewrite(html, "index.html", {"a.avif": "http://s/a.avif"})
    assert out.text == (
        '<IMG SRC="http://s/a.avif"><Video Poster=http://s/a.avif></Video>'
        '<object data="http://s/a.avif"></object><div data="a.avif"></div>'
        '<img data-src="http://s/a.avif" data-srcset="http://s/a.avif 2x">'
        '<link rel=preload as=image imagesrcset="http://s/a.avif 1x, b.png 2x">'
        '<svg><image xlink:href="http://s/a.avif"/></svg>'
    )


def test_srcset_keeps_descriptors_and_spacing() -> None:
    html = (
        '<picture><source srcset=" a.avif 1x ,b.avif 2x,c.png">'
        '<img srcset="x,y.png 1x, a.avif"></picture>'
    )
    urls = {"a.avif": "http://s/a.avif", "b.avif": "http://s/b.avif"}
    out = rewrite(html, "index.html", urls)
    assert out.text == (
        '<picture><source srcset=" http://s/a.avif 1x ,http://s/b.avif 2x,c.png">'
        '<img srcset="x,y.png 1x, http://s/a.avif"></picture>'
    )


# -- properties over generated HTML ------------------------------------------------------------
#
# A page is a list of (text, editable) pieces: only attribute values and CSS url()/string
# arguments are editable; tag names, text, comments and scripts must come out byte for byte.

STORED = {"a.avif": "http://s/a.avif", "v/clip.mp4": "http://s/v/clip.mp4?sig=1&t=2"}
REFERENCES = ["a.avif", "./a.avif", "/a.avif", "v/clip.mp4", "v/../v/clip.mp4", "%61.avif"]
NOISE = ["b.png", "x y", "&amp;", "=", "#top", "https://cdn/x.js", "", "a", "'", '"', "<", "\\"]
MENTIONS = [
    'src="a.avif"', "src=a.avif", "url(a.avif)", "href='v/clip.mp4'", '<img src="a.avif">',
    "a.avif", "&lt;img src=a.avif&gt;", " ", "x", "\n", "=", "'", '"', ">", "&",
]  # fmt: skip

Piece = tuple[str, bool]

mention = st.lists(st.sampled_from(MENTIONS), max_size=4).map("".join)


@st.composite
def attribute(draw: st.DrawFn) -> tuple[list[Piece], str, str]:
    name = draw(st.sampled_from(["src", "href", "poster", "srcset", "alt", "class", "SRC"]))
    value = draw(st.sampled_from(REFERENCES + NOISE))
    form = draw(st.sampled_from(['"', "'", "", None]))
    if form is None:
        return [(" " + name, False)], name, ""
    if form == "" and (not value or any(c in value for c in " \t\n\"'=<>`")):
        form = '"'
    if form and form in value:
        value = value.replace(form, "")
    if form:
        return [(f" {name}={form}", False), (value, True), (form, False)], name, value
    return [(f" {name}=", False), (value, True), (" ", False)], name, value


@st.composite
def piece(draw: st.DrawFn) -> list[Piece]:
    kind = draw(st.sampled_from(["text", "comment", "script", "tag", "end", "style"]))
    if kind == "text":
        return [(draw(mention).replace("<", "&lt;"), False)]
    if kind == "comment":
        body = draw(mention).replace("-", "")
        return [(f"<!-- {body} -->", False)]
    if kind == "script":
        return [(f"<script>{draw(mention)}</script>", False)]
    if kind == "end":
        return [(f"</{draw(st.sampled_from(['div', 'pre', 'video']))}>", False)]
    if kind == "style":
        ref = draw(st.sampled_from([*REFERENCES, "b.png"]))
        return [
            ("<style>/* url(a.avif) */ .x{background:url(", False),
            (ref, True),
            (")}</style>", False),
        ]
    tag = draw(st.sampled_from(["img", "video", "div", "pre", "source", "a"]))
    pieces: list[Piece] = [("<" + tag, False)]
    for parts, _, _ in draw(st.lists(attribute(), max_size=3)):
        pieces += parts
    return [*pieces, (">", False)]


pages = st.lists(piece(), max_size=8).map(lambda ps: [p for group in ps for p in group])


def page_text(pieces: list[Piece]) -> str:
    return "".join(text for text, _ in pieces)


@given(pages, st.sampled_from([{}, {"zz/never.bin": "http://x"}, {"a.avif/x": "http://x"}]))
def test_a_page_without_storage_references_is_unchanged(
    pieces: list[Piece], urls: dict[str, str]
) -> None:
    html = page_text(pieces)
    out = rewrite(html, "index.html", urls)
    assert out.text == html and out.references == ()


@given(pages)
def test_only_attribute_values_and_css_urls_change(pieces: list[Piece]) -> None:
    html = page_text(pieces)
    out = rewrite(html, "index.html", STORED)
    # Fixed pieces in order, anything in between: the output may differ only where editable.
    pattern = "".join("(.*?)" if editable else re.escape(text) for text, editable in pieces)
    assert re.fullmatch(pattern, out.text, re.S), (html, out.text)
    assert set(out.references) <= set(STORED)
    for path in out.references:  # as is in CSS, entity-escaped in an attribute
        assert STORED[path] in out.text or STORED[path].replace("&", "&amp;") in out.text
    # And every URL attribute naming a stored file was rewritten.
    for (before, _), (value, editable) in itertools.pairwise(pieces):
        if editable and before.strip(" ='\"").lower() in ("src", "href", "poster"):
            target = resolve(value, "index.html")
            if target in STORED:
                assert STORED[target].replace("&", "&amp;") in out.text


def test_references_hidden_by_escapes_or_url_whitespace_are_found() -> None:
    urls = {"a.avif": "http://s/a.avif"}
    for html in (
        '<img src="a.av\nif">',
        '<img src="a.av&#x69;f">',
        '<img src="a&period;avif">',
        '<img src="a&percnt;2eavif">',
        '<div style="background:url(a&bsol;2e avif)"></div>',
    ):
        assert rewrite(html, "index.html", urls).references == ("a.avif",), html
    assert rewrite("a{b:url('a.av\\\nif')}", "x.css", urls).references == ("a.avif",)
    assert rewrite('<img src="b.avif">', "a.avif/x/index.html", {"a.avif": "u"}).text == (
        '<img src="b.avif">'
    )


ESCAPY = st.lists(
    st.sampled_from(
        ["a", ".", "avif", "a.av", "if", "&#97;", "&#x2e;", "&period;", "&amp;", "&#8217;",
         "%61", "%2e", "%", "\\", "\\61 ", "\\2e", "\n", "\t", " ", "<img src=", '"', "'",
         "url(", ")", "<style>", "</style>", "srcset=", ",", "1x", "style=", ">", "<!--", "-->",
         "&percnt;", "&bsol;", "6", "1", "/", "../"]
    ),
    max_size=25,
).map("".join)  # fmt: skip


@given(ESCAPY, st.sampled_from(["index.html", "x/y.css", "a.avif/p.html"]))
def test_the_quick_pre_check_never_hides_a_reference(text: str, path: str) -> None:
    urls = {"a.avif": "http://s/a.avif", "x/a.avif": "http://s/x/a.avif"}
    with patch("mosaicsync.rewrite._may_reference", return_value=True):
        parsed = rewrite(text, path, urls)
    assert rewrite(text, path, urls) == parsed


# -- `references` agrees with the rewrite ------------------------------------------------------

CORPUS = [  # (text, path, storage URLs): the pages of the tests above
    ('<video src="video/intro.mp4" poster="img/p.png"></video>'
     '<img srcset="video/intro.mp4 2x, img/a.png 1x">'
     "<style>@font-face{src:url(/fonts/brand.woff2)}</style>"
     "<div style=\"background:url('fonts/brand.woff2')\"></div>", "index.html", URLS),
    ("@font-face{src:url('../fonts/brand.woff2') format('woff2')}\n"
     'b{background:url( ../fonts/brand.woff2 )}', "css/site.css", URLS),
    ("<video src=clip.mp4 poster=p.png></video><img src=a.avif alt=x>", "index.html",
     {"clip.mp4": "u", "a.avif": "u"}),
    ('@import "big.css";\n@import url(big.css) screen;\n@IMPORT url("big.css");\n'
     '.h{background-image:image-set("hero.avif" 1x, url(hero.avif) 2x)}\n'
     '/* url(hero.avif) */ .q{content:"hero.avif"}', "css/site.css",
     {"css/big.css": "u", "css/hero.avif": "u"}),
    ('<img src="a.avif?v=1&amp;w=2"><img src=\'&#97;.avif\'>'
     '<div style="background:url(&quot;b.avif&quot;)"></div><img src="%62.avif">', "index.html",
     {"a.avif": "u", "b.avif": "u"}),
    (".a{background:url(\\61 .avif)} .b{background:url('a\\2e avif')}", "site.css",
     {"a.avif": "u"}),
    ('<IMG SRC="a.avif"><Video Poster=a.avif></Video><object data="a.avif"></object>'
     '<div data="a.avif"></div><img data-src="a.avif" data-srcset="a.avif 2x">'
     '<link rel=preload as=image imagesrcset="a.avif 1x, b.png 2x">'
     '<svg><image xlink:href="a.avif"/></svg>', "index.html", {"a.avif": "u"}),
    ('<picture><source srcset=" a.avif 1x ,b.avif 2x,c.png">'
     '<img srcset="x,y.png 1x, a.avif"></picture>', "index.html", {"a.avif": "u", "b.avif": "u"}),
    ('<img src="a.av\nif"><img src="a.av&#x69;f"><img src="a&period;avif">'
     '<img src="a&percnt;2eavif"><div style="background:url(a&bsol;2e avif)"></div>',
     "index.html", {"a.avif": "u"}),
    ('<script>const u = "font.woff2"; el.innerHTML = \'<img src="font.woff2">\'</script>'
     '<!-- <link href="font.woff2"> src="font.woff2" --><pre>src="font.woff2"</pre>'
     '<textarea><img src="font.woff2"></textarea><title>src="font.woff2"</title>'
     "<p>url(font.woff2) src='font.woff2'</p><style>/* url(font.woff2) */</style>"
     '<script><!-- document.write("<script></script>"); <img src="font.woff2"> --></script>'
     '<!-- a -- > <img src="font.woff2"> --><style>a{}</style ><p>url(font.woff2)</p>',
     "index.html", FONT),
]  # fmt: skip


def assert_references_match_the_rewrite(text: str, path: str, urls: dict[str, str]) -> None:
    """Each edit of the rewrite holds exactly the references to stored files, at its place."""
    edits: list[rewrite_module._Edit] = []
    splice = rewrite_module._splice

    def capture(text: str, found: list[rewrite_module._Edit]) -> rewrite_module.Rewritten:
        edits.extend(found)
        return splice(text, found)

    with patch("mosaicsync.rewrite._splice", capture):
        rewrite(text, path, urls)
    stored = [ref for ref in references(text, path) if resolve(ref.value, path) in urls]
    for edit in edits:
        inside = [ref for ref in stored if edit.start <= ref.offset < max(edit.end, edit.start + 1)]
        assert [resolve(ref.value, path) for ref in inside] == list(edit.targets), (text, edit)
        for ref in inside:  # the reference's text starts at its offset (escapes aside)
            raw = text[ref.offset : edit.end]
            decoded = rewrite_module._AttributeValue(raw).text
            if "\\" not in decoded:  # not a CSS escape
                assert raw.startswith(ref.value) or decoded.startswith(ref.value), (text, ref)
    covered = [
        r for r in stored if any(e.start <= r.offset < max(e.end, e.start + 1) for e in edits)
    ]
    assert covered == stored, (text, edits, stored)


def test_references_are_where_the_rewrite_rewrites() -> None:
    for text, path, urls in CORPUS:
        assert_references_match_the_rewrite(text, path, urls)
    got = [(r.offset, r.value) for r in references(CORPUS[-1][0], "index.html")]
    assert got == []  # scripts, comments, raw text: nothing


@given(pages)
def test_references_agree_with_the_rewrite_on_generated_pages(pieces: list[Piece]) -> None:
    assert_references_match_the_rewrite(page_text(pieces), "index.html", STORED)


@given(ESCAPY, st.sampled_from(["index.html", "x/y.css"]))
def test_references_agree_with_the_rewrite_on_escapes(text: str, path: str) -> None:
    urls = {"a.avif": "http://s/a.avif", "x/a.avif": "http://s/x/a.avif"}
    assert_references_match_the_rewrite(text, path, urls)


def test_references_report_what_the_browser_reads() -> None:
    html = (
        '<img src=" a&amp;b.png " srcset="x.png 1x, y.png 2x">'
        "<style>@import 's.css'; a{b:url(q\\2e png)}</style>"
        '<div style="background:url(&quot;c.png&quot;)"></div>'
    )
    got = references(html, "index.html")
    assert [r.value for r in got] == ["a&b.png", "x.png", "y.png", "s.css", "q.png", "c.png"]
    assert [html[r.offset : r.offset + 5] for r in got] == [
        "a&amp", "x.png", "y.png", "s.css", "q\\2e ", "c.png",
    ]  # fmt: skip


# Each takes minutes when every `<` rescans to the end of the text (html.parser on its own).
PATHOLOGICAL = [  # (text, whether the browser sees the `<img>` after it)
    ("<a" * 100_000, True),  # one long tag name: `<a<a...<img` is a tag with `src`
    ("</" * 100_000, False),
    ("<!--x>" * 60_000, False),
    ("<!-- -- >" * 60_000, False),
    ("<![CDATA[x>" * 60_000, True),
    ("<!-- -- >" * 30_000 + "-->", True),
    ("<a b='x>" * 60_000, True),  # quoted values pair up: `<a b='x><a b='x>`
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("text", "seen"), PATHOLOGICAL, ids=lambda text: str(text)[:12])
def test_malformed_markup_takes_linear_time(text: str, seen: bool) -> None:
    page = text + '<img src="a.avif">'
    assert [r.value for r in references(page, "index.html")] == (["a.avif"] if seen else [])
    rewritten = rewrite(page, "index.html", {"a.avif": "http://s/a.avif"}).text
    assert (rewritten != page) is seen


def test_what_follows_an_unclosed_comment_or_tag_is_no_reference() -> None:
    assert references('<img src="a.png"><!-- <img src="b.png">', "i.html") == [(10, "a.png")]
    assert references('<img src="a.png"><img src="b.png"', "i.html") == [(10, "a.png")]
    assert [r.value for r in references('<![CDATA[<img src="a.png">]]><img src=b.png>', "i")] == [
        "b.png"
    ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", ["<a" * 100_000, "</" * 100_000, "<?" * 100_000])
def test_markup_cut_off_by_the_end_of_the_file_takes_linear_time(text: str) -> None:
    page = '<img src="a.avif">' + text  # no `>` after: a browser drops the unfinished tag
    assert references(page, "index.html") == [(10, "a.avif")]
    assert rewrite(page, "index.html", {"a.avif": "u"}).text == '<img src="u">' + text
