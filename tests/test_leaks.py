"""The search for secrets in published files: exact values, patterns, chunks, positions."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaicsync import leaks
from mosaicsync.credentials import redact
from mosaicsync.findings import SECRET

KEY = "mk_Q3vTn8ZpLw0KbR7dXy2F9sHj"
PASSWORD = "Zr8wQpL2mVx7Tn4Kd"
DB_URL = f"postgresql://tenant_x:{PASSWORD}@127.0.0.1:5432/tenant_x"


def searcher() -> leaks.Searcher:
    return leaks.Searcher(
        [
            leaks.Secret(KEY, "the API key in use", allowable=False),
            leaks.Secret(PASSWORD, "the project's database password"),
            leaks.Secret(DB_URL, "the project's database URL"),
        ]
    )


def labels(data: bytes) -> list[tuple[int, str]]:
    return [(h.offset, h.label) for h in searcher().hits(data)]


def test_exact_values_are_found_wherever_they_stand():
    data = f'const k="{KEY}";\nfetch(u,{{headers:{{"X-API-Key":"x{KEY}x"}}}})'.encode()
    found = labels(data)
    assert [label for _, label in found] == ["the API key in use"] * 2
    assert found[0][0] == data.index(KEY.encode())


@given(
    st.binary(max_size=300),
    st.binary(max_size=300),
    st.sampled_from(["mk_local_dev_key", "postgres://u:Secret99@h/db", "plain-secret-9"]),
)
def test_an_exact_value_is_found_whatever_literal_it_begins_with(
    before: bytes, after: bytes, value: str
) -> None:
    # A value beginning with a pattern's literal is looked for only where that literal is:
    # sound only because the value, where it stands, brings the literal with it.
    found = leaks.Searcher([leaks.Secret(value, "it")]).hits(before + value.encode() + after)
    assert len(before) in [h.offset for h in found if h.label == "it"]


def test_the_database_url_is_one_finding_not_also_a_url_with_a_password():
    data = f"DATABASE={DB_URL}\n".encode()
    assert labels(data) == [(9, "the project's database URL")]


@pytest.mark.parametrize(
    "text, label",
    [
        ("key = 'mk_a1B2c3D4e5F6g7H8i9J0kk'", "a string shaped like a Mosaic API key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "a PEM private key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "a PEM private key"),
        ("-----BEGIN PRIVATE KEY-----", "a PEM private key"),
        ("postgres://app:hunter2hunter2@db.example.com/app", "a PostgreSQL URL with a password"),
    ],
)
def test_patterns(text: str, label: str):
    assert [lab for _, lab in labels(text.encode())] == [label]


@pytest.mark.parametrize(
    "text",
    [
        ".mk_primary_button_background_color { color: red }",  # an identifier, no digit
        "Tell your AI: use my API key mk_your_key_here",
        "xmk_a1B2c3D4e5F6g7H8i9J0kk",  # part of a longer word
        "mk_short1",
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "postgres://user:password@localhost/db",
        "postgresql://app:${DB_PASSWORD}@db/app",
        "postgresql://app:<password>@db/app",
        "postgresql://app:****@db/app",
        "postgresql://localhost:5432/app",  # no password
        "mypostgres://a:b1c2d3e4f5@host",
    ],
)
def test_what_is_not_a_secret(text: str):
    assert labels(text.encode()) == []


def test_a_short_exact_value_is_not_searched_for():
    assert list(leaks.Searcher([leaks.Secret("abc", "x")]).hits(b"abcabc")) == []


def test_a_secret_across_a_chunk_boundary_is_found_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(leaks, "CHUNK", 64)
    for split in range(0, 80):
        data = b"a" * split + KEY.encode() + b"b" * 100
        hits = list(searcher().search(io.BytesIO(data)))
        assert [(h.offset, h.label) for h in hits] == [(split, "the API key in use")], split


def test_binary_and_non_utf8_content_is_searched_as_bytes(tmp_path: Path):
    data = b"\x89PNG\x00\xff\xfe" * 10 + b"\n\xe9t\xe9 " + KEY.encode() + b"\x00"
    path = tmp_path / "blob.txt"
    path.write_bytes(data)
    with path.open("rb") as f:
        hits = list(searcher().search(f))
    assert len(hits) == 1
    line, column = leaks.position(path, hits[0].offset)
    assert (line, column) == (2, 5)  # after "\xe9t\xe9 ", decoded as 4 characters


def test_position_counts_characters_not_bytes(tmp_path: Path):
    path = tmp_path / "app.js"
    path.write_text(f"// é\n\nconst café = '{KEY}';\n", encoding="utf-8")
    offset = path.read_bytes().index(KEY.encode())
    assert leaks.position(path, offset) == (3, 15)  # "const café = '" is 14 characters


def test_findings_show_a_masked_preview_that_output_keeps(tmp_path: Path):
    path = tmp_path / "app.js"
    path.write_text(f"const k = '{KEY}';\nconst d = '{DB_URL}';\n")
    with path.open("rb") as f:
        hits = list(searcher().search(f))
    found = leaks.findings_for("app.js", path, hits, allowed=False)
    assert [(f.kind, f.line, f.column, f.severity) for f in found] == [
        (SECRET, 1, 12, "error"),
        (SECRET, 2, 12, "error"),
    ]
    text = " ".join(f.line_text() + f.hint for f in found)
    assert KEY not in text and PASSWORD not in text
    assert "mk_Q3…Hj" in text and "postgresql://tenant_x:…@127.0.0.1:5432" in text
    # What the CLI prints goes through the redaction; the preview survives it, the key not.
    assert "mk_Q3…Hj" in redact(text, KEY) and KEY not in redact(text + KEY, KEY)


def test_allow_secret_passes_all_but_the_key_in_use(tmp_path: Path):
    path = tmp_path / "app.js"
    path.write_text(f"'{PASSWORD}' '{KEY}' -----BEGIN PRIVATE KEY-----\n")
    with path.open("rb") as f:
        hits = list(searcher().search(f))
    assert len(hits) == 3
    kept = leaks.findings_for("app.js", path, hits, allowed=True)
    assert [f.message.split(" (")[0] for f in kept] == ["the API key in use"]


def test_media_are_not_read_everything_else_is():
    assert not leaks.worth_reading("img/photo.PNG")
    assert not leaks.worth_reading("fonts/a.woff2")
    for path in ("app.js", "data.json", "notes", "weird.bin", "x.png.txt", "bundle.mjs.map"):
        assert leaks.worth_reading(path), path


def test_a_50_mb_file_is_one_linear_pass():
    data = (b"function f(a){return a+1}" * 40 + b"\n") * 50_000
    assert len(data) > 50_000_000
    assert list(searcher().search(io.BytesIO(data + KEY.encode()))) != []


@pytest.mark.parametrize("index", range(len(leaks._LITERALS)))
def test_every_match_starts_with_the_literal_its_chunk_is_skipped_without(index: int) -> None:
    # A chunk without a pattern's literal is not searched by the pattern: sound only if no
    # match can start otherwise. Texts that hold a match, drawn from the pattern itself.
    literal, pattern = leaks._patterns()[index]

    @given(st.from_regex(pattern))
    def holds(data: bytes) -> None:
        matches = list(pattern.finditer(data))
        assert matches
        for match in matches:
            assert data.startswith(literal, match.start()), (literal, match.group(0))

    holds()
