"""Point HTML and CSS at files that went to storage, so a site works with some files off-site.

Pure text in, text out: the deploy gives the map of storage-routed paths to their URLs. The
stdlib HTML tokenizer finds the tags, tinycss2 the CSS tokens; each reference is replaced by
offset in the original text, so nothing else moves. Rewritten: `src`, `href`, `poster`,
`xlink:href`, `<object data>`, their lazy-loading `data-` twins, `srcset`/`imagesrcset`,
`style` attributes and `<style>` blocks (CSS `url()`, `@import "x"`, `image-set()` strings).
Never touched: scripts (they can read `mosaic-assets.json`), comments, and any text.
`references` lists what the rewrite considers a reference, for the broken-reference check.
"""

from __future__ import annotations

import bisect
import functools
import html
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from html.entities import html5
from html.parser import HTMLParser
from typing import Any, NamedTuple

import tinycss2

from mosaicsync.sitepaths import resolve


class Rewritten(NamedTuple):
    text: str
    references: tuple[str, ...]  # storage paths this file now points at


class Reference(NamedTuple):
    offset: int  # where the reference's text starts in the page
    value: str  # as the browser reads it: character references and CSS escapes resolved


def references(text: str, from_path: str) -> list[Reference]:
    """Every reference in `text` that `rewrite` would consider, in order, local or not.

    The same tokenizers and the same rules as the rewrite, so the two never disagree about what
    a reference is: nothing inside scripts, comments or other text. A reference whose text
    splits a character reference is placed at the start of its attribute's value.
    """
    found: list[Reference] = []
    if from_path.lower().endswith(".css"):
        found += (Reference(css.start, css.value) for css in _css_urls(text, stylesheet=True))
        return sorted(found)  # the CSS scan visits nested blocks last

    def wanted(tag: str, attrs: list[tuple[str, str | None]], raw: str) -> bool:
        return tag == "style" or any(v and _attribute_kind(tag, n) for n, v in attrs)

    for tag in _start_tags(text, wanted):
        for attribute, value, kind in _attribute_values(text, tag):
            for start, end, ref, _ in _references(value.text, kind):
                span = value.raw_span(start, end)
                found.append(Reference(attribute.start + (span[0] if span else 0), ref))
        if tag.content_end is not None:  # a <style> block, after its tag's attributes
            block = _css_urls(text[tag.end : tag.content_end], stylesheet=True)
            found += (Reference(css.start + tag.end, css.value) for css in block)
    return sorted(found)


def rewrite(text: str, from_path: str, storage_urls: Mapping[str, str]) -> Rewritten:
    """Replace references to storage-routed files with their storage URLs."""
    if not storage_urls or not _may_reference(text, from_path, storage_urls):
        return Rewritten(text, ())
    names = {posixpath.basename(path) for path in storage_urls}

    def lookup(ref: str) -> tuple[str, str] | None:
        if not _URL_DECODED.search(ref):  # a quick miss on the file name, before urlsplit
            last = ref.partition("#")[0].partition("?")[0].rpartition("/")[2]
            if last not in names and last not in ("", ".", ".."):
                return None
        target = resolve(ref, from_path)
        if target is None or target not in storage_urls:
            return None
        return target, storage_urls[target]

    if from_path.lower().endswith(".css"):
        edits = _css_edits(text, lookup, stylesheet=True)
    else:
        edits = _html_edits(text, lookup)
    return _splice(text, edits)


# -- the cheap pre-check ---------------------------------------------------------------------

# A reference resolves to a path only if its decoded form holds the path's file name. So a page
# that holds no file name literally can only reference one through an escape that yields one
# of its characters, or a `%` or `\\` (or a hex digit for one) that starts another escape.
_ESCAPE = re.compile(r"\\|%[0-9A-Fa-f]{2}|\x00")
_NUMERIC_REFERENCE = re.compile(r"&#(?:[0-9]+|[xX][0-9a-fA-F]+);?")
_NORMALIZED = frozenset("\r\n\f\x00\ufffd")  # characters the tokenizers rewrite on input
_URL_DROPPED = "\t\n\r"
_URL_DECODED = re.compile(r"[%\t\n\r]")  # what can change a file name inside urlsplit/unquote
_ESCAPE_MAKERS = frozenset("%\\0123456789abcdefABCDEF")


@functools.cache
def _entities_by_character() -> dict[str, tuple[str, ...]]:
    """The named references that yield each character. Built on first need, by the storage
    rewrite alone: ~5 ms of every run that parses a page for its references otherwise."""
    found: dict[str, set[str]] = {}
    for name, value in html5.items():
        for char in value:
            found.setdefault(char, set()).add("&" + name.rstrip(";"))
    return {char: tuple(sorted(names)) for char, names in found.items()}


def _may_reference(text: str, from_path: str, storage_urls: Mapping[str, str]) -> bool:
    """False only when no reference in `text` can resolve to a key of `storage_urls`."""
    if _ESCAPE.search(text):
        return True
    names = set()
    for path in storage_urls:
        # `..` from a/b/page.html resolves to `a`, a name the text need not hold.
        if from_path.startswith(path + "/"):
            return True
        name = posixpath.basename(path)
        if not _NORMALIZED.isdisjoint(name):
            return True
        names.add(name)
    relevant = _ESCAPE_MAKERS.union(*names)
    for reference in set(_NUMERIC_REFERENCE.findall(text)):  # `&#8217;` and the like are common
        decoded = html.unescape(reference)
        if not decoded or not relevant.isdisjoint(decoded):
            return True
    entities = _entities_by_character()
    if any(entity in text for char in relevant for entity in entities.get(char, ())):
        return True
    if _holds_a_name(text, names):
        return True
    # URL parsing drops tabs and newlines anywhere in a URL: `a.av<LF>if` is `a.avif`.
    if any(char in text for char in _URL_DROPPED):
        stripped = text.replace("\t", "").replace("\n", "").replace("\r", "")
        return _holds_a_name(stripped, names)
    return False


def _holds_a_name(text: str, names: set[str]) -> bool:
    """Whether `text` holds one of `names`: one scan per extension, not one per name."""
    by_suffix: dict[str, set[str]] = {}
    for name in names:
        dot = name.rfind(".")
        by_suffix.setdefault(name[dot:] if dot > 0 else name, set()).add(name)
    for suffix, group in by_suffix.items():
        lengths = {len(name) for name in group}
        at = text.find(suffix)
        while at >= 0:
            end = at + len(suffix)
            if any(text[end - length : end] in group for length in lengths):
                return True
            at = text.find(suffix, at + 1)
    return False


# -- edits ----------------------------------------------------------------------------------

_Lookup = Callable[[str], "tuple[str, str] | None"]  # reference -> (storage path, URL)


class _Edit(NamedTuple):
    start: int
    end: int
    text: str
    targets: tuple[str, ...]


def _splice(text: str, edits: list[_Edit]) -> Rewritten:
    out: list[str] = []
    found: set[str] = set()
    pos = 0
    for edit in sorted(edits, key=lambda e: e.start):
        if edit.start < pos:  # cannot happen with disjoint tokens; never corrupt if it does
            continue
        out += (text[pos : edit.start], edit.text)
        found.update(edit.targets)
        pos = edit.end
    out.append(text[pos:])
    return Rewritten("".join(out), tuple(sorted(found)))


# -- CSS ------------------------------------------------------------------------------------

_CSS_WHITESPACE = " \t\n\r\f"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_CSS_NEWLINE = re.compile(r"\r\n|[\r\n\f]")
_CSS_HINT = re.compile(r"url|image-set|@import|\\", re.I)
_IMAGE_SETS = frozenset({"image-set", "-webkit-image-set"})
_BLOCKS = frozenset({"() block", "[] block", "{} block"})


class _CssUrl(NamedTuple):
    start: int  # the URL's text, without its quotes
    end: int
    value: str  # the URL with CSS escapes resolved
    quote: str  # '"' or "'" for a string, "" inside url( )


def _css_edits(css: str, lookup: _Lookup, *, stylesheet: bool) -> list[_Edit]:
    edits = []
    for found in _css_urls(css, stylesheet=stylesheet):
        hit = lookup(found.value)
        if hit is not None:
            target, url = hit
            edits.append(_Edit(found.start, found.end, _css_escape(url, found.quote), (target,)))
    return edits


def _css_urls(css: str, *, stylesheet: bool) -> Iterator[_CssUrl]:
    """Every URL in `css` a browser would fetch: `url()`, `@import "x"`, `image-set("x")`."""
    if not _CSS_HINT.search(css):
        return
    line_starts = [0, *(m.end() for m in _CSS_NEWLINE.finditer(css))]
    for token in _css_url_tokens(tinycss2.parse_component_value_list(css), stylesheet):
        # tinycss2 counts lines after folding CRLF, CR and FF into LF, and columns from 1.
        start = line_starts[token.source_line - 1] + token.source_column - 1
        span = _string_span(css, start) if token.type == "string" else _url_span(css, start)
        if span is None:
            continue
        inner_start, inner_end, token_end = span
        # Read back what we cut out: if it is not this token, leave it alone.
        again = tinycss2.parse_component_value_list(css[start:token_end])
        if len(again) != 1 or again[0].type != token.type or again[0].value != token.value:
            continue
        quote = css[start] if token.type == "string" else ""
        yield _CssUrl(inner_start, inner_end, token.value, quote)


def _css_url_tokens(values: list[Any], stylesheet: bool) -> Iterator[Any]:
    pending = [(values, stylesheet)]
    while pending:
        nodes, top_level = pending.pop()
        after_import = False
        for node in nodes:
            kind = node.type
            if kind in ("whitespace", "comment"):
                continue
            if kind == "string" and after_import:
                yield node
            after_import = top_level and kind == "at-keyword" and node.lower_value == "import"
            if kind == "url":
                yield node
            elif kind == "function":
                arguments = [a for a in node.arguments if a.type not in ("whitespace", "comment")]
                if node.lower_name == "url":
                    if arguments and arguments[0].type == "string":
                        yield arguments[0]
                    continue
                if node.lower_name in _IMAGE_SETS:
                    yield from (a for a in arguments if a.type == "string")
                pending.append((node.arguments, False))
            elif kind in _BLOCKS:
                pending.append((node.content, False))


def _string_span(css: str, start: int) -> tuple[int, int, int] | None:
    """(text start, text end, token end) of the CSS string opening at `start`."""
    quote = css[start] if start < len(css) else ""
    if quote not in ("'", '"'):
        return None
    i = start + 1
    while i < len(css):
        char = css[i]
        if char == quote:
            return start + 1, i, i + 1
        if char == "\\":
            i = _escape_end(css, i)
            continue
        if char in "\n\r\f":
            return None
        i += 1
    return start + 1, len(css), len(css)


def _url_span(css: str, start: int) -> tuple[int, int, int] | None:
    """(text start, text end, token end) of the unquoted `url( ... )` token at `start`."""
    i = start
    while i < len(css) and css[i] != "(":
        i = _escape_end(css, i) if css[i] == "\\" else i + 1
    i += 1
    while i < len(css) and css[i] in _CSS_WHITESPACE:
        i += 1
    text_start = i
    while i < len(css) and css[i] not in _CSS_WHITESPACE and css[i] != ")":
        i = _escape_end(css, i) if css[i] == "\\" else i + 1
    text_end = min(i, len(css))
    while i < len(css) and css[i] in _CSS_WHITESPACE:
        i += 1
    if i < len(css) and css[i] != ")":
        return None
    return text_start, text_end, min(i + 1, len(css))


def _css_escape(url: str, quote: str) -> str:
    """`url` as the text of a CSS string quoted by `quote`, or of an unquoted url() if ""."""
    unsafe = f"\\<{quote}\n\r\f" if quote else f"\\<\"'(){_CSS_WHITESPACE}"
    return "".join(
        f"\\{ord(c):x} " if c in unsafe or ord(c) < 0x20 or c == "\x7f" else c for c in url
    )


def _escape_end(css: str, i: int) -> int:
    """The end of the CSS escape whose backslash is at `i` (a hex escape eats one space)."""
    i += 1
    if i < len(css) and css[i] in _HEX_DIGITS:
        end = i + 1
        while end < len(css) and end < i + 6 and css[end] in _HEX_DIGITS:
            end += 1
        if css.startswith("\r\n", end):
            return end + 2
        return end + 1 if end < len(css) and css[end] in _CSS_WHITESPACE else end
    return i + 2 if css.startswith("\r\n", i) else i + 1


# -- HTML -----------------------------------------------------------------------------------

_HTML_WHITESPACE = "\t\n\f\r "
_URL_ATTRIBUTES = frozenset({"src", "href", "poster", "data-src", "data-href", "data-poster"})
_SRCSET_ATTRIBUTES = frozenset({"srcset", "imagesrcset", "data-srcset"})
# Elements whose content is text to the browser, up to their own end tag.
_RAW_TEXT = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes")


def _attribute_kind(tag: str, name: str) -> str | None:
    if name in _URL_ATTRIBUTES or name == "xlink:href" or (name == "data" and tag == "object"):
        return "url"
    if name in _SRCSET_ATTRIBUTES:
        return "srcset"
    if name == "style":
        return "style"
    return None


def _html_edits(text: str, lookup: _Lookup) -> list[_Edit]:
    edits: list[_Edit] = []

    def wanted(tag: str, attrs: list[tuple[str, str | None]], raw: str) -> bool:
        if tag == "style":
            return True
        values = [(kind, v) for n, v in attrs if v and (kind := _attribute_kind(tag, n))]
        if not values:
            return False
        # Without `&`, CR or NUL, html.parser's values are the browser's (or the tag is
        # skipped below anyway), so a miss on them is a miss.
        if "&" in raw or "\r" in raw or "\x00" in raw:
            return True
        return any(lookup(ref) for kind, v in values for _, _, ref, _ in _references(v, kind))

    for tag in _start_tags(text, wanted):
        if tag.content_end is not None:  # a <style> block
            for edit in _css_edits(text[tag.end : tag.content_end], lookup, stylesheet=True):
                edits.append(
                    _Edit(edit.start + tag.end, edit.end + tag.end, edit.text, edit.targets)
                )
        edits += _attribute_edits(text, tag, lookup)
    return edits


_Wanted = Callable[[str, list[tuple[str, "str | None"]], str], bool]  # tag, attrs, raw text


class _StartTag(NamedTuple):
    name: str
    attrs: list[tuple[str, str | None]]
    start: int
    end: int
    content_end: int | None  # for <style>: where its CSS ends


class _Tokenizer(HTMLParser):
    """Start tags worth a look, with their offsets, skipping what the browser reads as text.

    html.parser finds tags; where it is more lenient than browsers (comments closed by `-- >`,
    scripts holding `<!--<script>`), the spec's own end is computed and tags before it ignored.
    """

    CDATA_CONTENT_ELEMENTS = _RAW_TEXT

    def __init__(self, text: str, wanted: _Wanted) -> None:
        super().__init__(convert_charrefs=True)
        self.text = text
        self._wanted = wanted
        self.tags: list[_StartTag] = []
        self._lines = [0, *(m.end() for m in re.finditer("\n", text))]
        self._text_until = 0  # start tags before this offset are text to the browser
        self._cdata_close: int | None = None  # where the last `]]>` starts, once needed

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._lines[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        start = self._offset()
        raw = self.get_starttag_text()
        if start < self._text_until or not raw or not self.text.startswith(raw, start):
            return
        end = start + len(raw)
        content_end = None
        if tag in _RAW_TEXT:  # `<script/>` still opens a script in HTML
            content_end = _raw_text_end(self.text, tag, end)
            self._text_until = content_end
        elif tag == "plaintext":
            self._text_until = len(self.text)
        if self._wanted(tag, attrs, raw):
            self.tags.append(
                _StartTag(tag, attrs, start, end, content_end if tag == "style" else None)
            )

    def parse_comment(self, i: int, report: int = 1) -> int:
        start = self._offset()
        if start >= self._text_until and _comment_end(self.text, start) is None:
            raise _RestIsText  # a comment the browser ends only at the end of the file
        return super().parse_comment(i, report)

    def handle_comment(self, data: str) -> None:
        start = self._offset()
        if start < self._text_until:  # text to the browser: not a comment, and ends known
            return
        end = _comment_end(self.text, start)
        self._text_until = len(self.text) if end is None else end

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        # `<![CDATA[` ... `]]>` is text in SVG and MathML; any other `<![` is a bogus comment to
        # browsers (html.parser raises on some). Searched once: an unclosed `<![CDATA[` is not
        # looked for again at each one that follows.
        if self.rawdata.startswith("<![CDATA[", i):
            if self._cdata_close is None:
                self._cdata_close = self.text.rfind("]]>")
            if self._offset() + 9 <= self._cdata_close:
                return self.rawdata.index("]]>", i + 9) + 3
        return self.parse_bogus_comment(i, report)


class _RestIsText(Exception):
    """Raised by the tokenizer when the rest of the text holds no tag for the browser."""


def _start_tags(text: str, wanted: _Wanted) -> list[_StartTag]:
    tokenizer = _Tokenizer(text, wanted)
    # No tag ends after the last `>`: a browser drops a tag cut off by the end of the file. And
    # html.parser rescans to the end for each `<` it cannot close, quadratic on `<a<a<a...`.
    try:
        tokenizer.feed(text[: text.rfind(">") + 1])
        tokenizer.close()
    except (AssertionError, _RestIsText):  # html.parser gave up, or nothing follows: keep them
        pass
    return tokenizer.tags


_COMMENT_CLOSE = re.compile(r"--!?>")
_SCRIPT_DATA = re.compile(r"<!--|</script[\t\n\f\r />]", re.I)
_SCRIPT_ESCAPED = re.compile(r"-->|</script[\t\n\f\r />]|<script[\t\n\f\r />]", re.I)
_SCRIPT_DOUBLE_ESCAPED = re.compile(r"-->|</script[\t\n\f\r />]", re.I)


def _comment_end(text: str, start: int) -> int | None:
    """Where the comment (or bogus comment) at `start` ends for a browser; None: at the end."""
    if text.startswith("<!--", start):
        body = start + 4
        if text.startswith(">", body):
            return body + 1
        if text.startswith("->", body):
            return body + 2
        close = _COMMENT_CLOSE.search(text, body)
        return close.end() if close else None
    close_at = text.find(">", start)
    return close_at + 1 if close_at >= 0 else None


def _raw_text_end(text: str, tag: str, start: int) -> int:
    """Where the content of a raw-text element opened just before `start` ends."""
    if tag != "script":
        end = re.compile(rf"</{tag}[\t\n\f\r />]", re.I).search(text, start)
        return end.start() if end else len(text)
    # A script ends at `</script`, except inside `<!--` ... `<script>` ... `-->`.
    state, i = _SCRIPT_DATA, start
    while (found := state.search(text, i)) is not None:
        token = found[0].lower()
        if state is _SCRIPT_DATA:
            if token == "<!--":
                state, i = _SCRIPT_ESCAPED, found.start() + 2  # `<!-->` closes at once
                continue
            return found.start()
        if token == "-->":
            state, i = _SCRIPT_DATA, found.end()
        elif state is _SCRIPT_ESCAPED and token.startswith("</"):
            return found.start()
        else:
            escaped = state is _SCRIPT_ESCAPED
            state = _SCRIPT_DOUBLE_ESCAPED if escaped else _SCRIPT_ESCAPED
            i = found.end() - 1
    return len(text)


class _Attribute(NamedTuple):
    name: str
    quote: str | None  # None: no value; "": unquoted
    start: int  # the value's text, without its quotes
    end: int


def _attributes(text: str, start: int, end: int) -> list[_Attribute]:
    """The attributes of the start tag text[start:end], as the HTML tokenizer splits them."""
    ws = _HTML_WHITESPACE
    i = start + 1
    while i < end and text[i] not in ws and text[i] not in "/>":
        i += 1
    found = []
    while True:
        while i < end and (text[i] in ws or text[i] == "/"):
            i += 1
        if i >= end or text[i] == ">":
            return found
        name_start = i
        i += 1
        while i < end and text[i] not in ws and text[i] not in "/>=":
            i += 1
        name = text[name_start:i].lower()
        while i < end and text[i] in ws:
            i += 1
        if i >= end or text[i] != "=":
            found.append(_Attribute(name, None, i, i))
            continue
        i += 1
        while i < end and text[i] in ws:
            i += 1
        if i < end and text[i] in "\"'":
            quote = text[i]
            close = text.find(quote, i + 1, end)
            close = end if close < 0 else close
            found.append(_Attribute(name, quote, i + 1, close))
            i = close + 1
        else:
            value_start = i
            while i < end and text[i] not in ws and text[i] != ">":
                i += 1
            found.append(_Attribute(name, "", value_start, i))


def _attribute_values(
    text: str, tag: _StartTag
) -> Iterator[tuple[_Attribute, _AttributeValue, str]]:
    """(attribute, decoded value, kind) of each attribute of `tag` that holds references."""
    attributes = _attributes(text, tag.start, tag.end)
    if [a.name for a in attributes] != [name for name, _ in tag.attrs]:
        return  # html.parser split this tag otherwise: leave it as it is
    for attribute, (_, parsed) in zip(attributes, tag.attrs, strict=True):
        kind = _attribute_kind(tag.name, attribute.name)
        if kind is None or attribute.quote is None:
            continue
        raw = text[attribute.start : attribute.end]
        value = _AttributeValue(raw)
        if parsed is not None and parsed not in (value.text, html.unescape(raw)):
            continue
        yield attribute, value, kind


def _attribute_edits(text: str, tag: _StartTag, lookup: _Lookup) -> list[_Edit]:
    edits = []
    for attribute, value, kind in _attribute_values(text, tag):
        edit = _attribute_edit(attribute, value, kind, lookup)
        if edit is not None:
            edits.append(edit)
    return edits


def _attribute_edit(
    attribute: _Attribute, value: _AttributeValue, kind: str, lookup: _Lookup
) -> _Edit | None:
    # (start, end, new text) in the raw value, new text still to be escaped for HTML
    pieces: list[tuple[int, int, str]] = []
    targets = []
    for start, end, ref, css_quote in _references(value.text, kind):
        hit = lookup(ref)
        raw_span = value.raw_span(start, end) if hit else None
        if hit is None or raw_span is None:
            continue
        target, url = hit
        pieces.append((*raw_span, url if css_quote is None else _css_escape(url, css_quote)))
        targets.append(target)
    if not pieces:
        return None
    escaped = [_escape_attribute(new, attribute.quote or '"') for _, _, new in pieces]
    kept, pos = [], 0
    for start, end, _ in pieces:
        kept.append(value.raw[pos:start])
        pos = end
    kept.append(value.raw[pos:])
    # An unquoted value ends at a space; a URL with one (or `=`, quotes...) gets quotes.
    quote = attribute.quote == "" and any(_UNQUOTED_UNSAFE.search(new) for new in escaped)
    if quote:
        kept = [part.replace('"', "&quot;") for part in kept]
    new_value = kept[0] + "".join(new + part for new, part in zip(escaped, kept[1:], strict=True))
    if quote:
        new_value = f'"{new_value}"'
    return _Edit(attribute.start, attribute.end, new_value, tuple(targets))


_UNQUOTED_UNSAFE = re.compile(r"[\t\n\f\r '=<>`]|^$")


def _escape_attribute(value: str, quote: str) -> str:
    value = value.replace("&", "&amp;")
    return value.replace('"', "&quot;") if quote == '"' else value.replace("'", "&#39;")


def _references(value: str, kind: str) -> Iterator[tuple[int, int, str, str | None]]:
    """(start, end, reference, CSS quote or None) of each URL in an attribute's value."""
    if kind == "url":
        stripped = value.strip(_HTML_WHITESPACE)
        if stripped:
            start = len(value) - len(value.lstrip(_HTML_WHITESPACE))
            yield start, start + len(stripped), stripped, None
    elif kind == "srcset":
        for start, end in _srcset_urls(value):
            yield start, end, value[start:end], None
    else:
        for found in _css_urls(value, stylesheet=False):
            yield found.start, found.end, found.value, found.quote


def _srcset_urls(value: str) -> Iterator[tuple[int, int]]:
    """Spans of the image URLs in a srcset, skipping descriptors (HTML's own algorithm)."""
    ws, i, n = _HTML_WHITESPACE, 0, len(value)
    while True:
        while i < n and (value[i] in ws or value[i] == ","):
            i += 1
        if i >= n:
            return
        start = i
        while i < n and value[i] not in ws:
            i += 1
        end = i
        while end > start and value[end - 1] == ",":
            end -= 1
        if end > start:
            yield start, end
        if end < i:  # trailing commas end the candidate: no descriptors
            continue
        in_parens = False
        while i < n and (in_parens or value[i] != ","):
            if value[i] == "(":
                in_parens = True
            elif value[i] == ")":
                in_parens = False
            i += 1


_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


class _AttributeValue:
    """An attribute value's text with character references resolved, as the HTML spec does in
    attributes, mapped back to offsets in the raw value so a part can be replaced in place."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        # (decoded start, raw start, decoded length, raw length, literal) per run
        self._runs: list[tuple[int, int, int, int, bool]] = []
        if "&" not in raw:
            self.text = raw
            return
        out: list[str] = []
        decoded = pos = 0
        for match in _CHARREF.finditer(raw):
            replaced = self._reference(raw, match)
            if replaced is None:
                continue
            end, chars = replaced
            if match.start() > pos:
                literal = raw[pos : match.start()]
                self._runs.append((decoded, pos, len(literal), len(literal), True))
                out.append(literal)
                decoded += len(literal)
            self._runs.append((decoded, match.start(), len(chars), end - match.start(), False))
            out.append(chars)
            decoded += len(chars)
            pos = end
        if pos < len(raw):
            self._runs.append((decoded, pos, len(raw) - pos, len(raw) - pos, True))
            out.append(raw[pos:])
        self.text = "".join(out)
        self._starts = [run[0] for run in self._runs]

    @staticmethod
    def _reference(raw: str, match: re.Match[str]) -> tuple[int, str] | None:
        body = match[1]
        if body.startswith("#"):
            return match.end(), html.unescape(match[0])
        # The longest known name wins: `&notit;` is `¬` then `it;`.
        prefixes = (body[:length] for length in range(len(body), 1, -1))
        name = next((prefix for prefix in prefixes if prefix in html5), None)
        if name is None:
            return None
        end = match.start() + 1 + len(name)
        after = raw[end : end + 1]
        # In attributes, `&copy=1` stays as written (HTML's rule for legacy names).
        if not name.endswith(";") and (after == "=" or (after.isascii() and after.isalnum())):
            return None
        return end, html5[name]

    def raw_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The raw span that decodes to text[start:end], or None if it splits a reference."""
        if not self._runs:
            return start, end
        raw_start = self._raw_offset(start, at_start=True)
        raw_end = self._raw_offset(end, at_start=False)
        if raw_start is None or raw_end is None:
            return None
        return raw_start, raw_end

    def _raw_offset(self, offset: int, *, at_start: bool) -> int | None:
        if offset <= 0:
            return 0
        if offset >= len(self.text):
            return len(self.raw)
        # A span starts in the run holding its first character and ends in the run holding
        # its last one (runs start at decoded 0 and follow each other without gaps).
        if at_start:
            index = bisect.bisect_right(self._starts, offset) - 1
        else:
            index = bisect.bisect_left(self._starts, offset) - 1
        decoded, raw, length, raw_length, literal = self._runs[index]
        if literal:
            return raw + offset - decoded
        if offset == decoded:
            return raw
        if offset == decoded + length:
            return raw + raw_length
        return None
