"""Rewriting HTML and CSS references to storage-routed files (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mosaicsync.rewrite import resolve, rewrite

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
