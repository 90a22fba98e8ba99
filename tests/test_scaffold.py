"""`mosaicsync init`: the templates, the project they make, and never overwriting a file."""

from __future__ import annotations

import re
import struct
import tomllib
import zlib
from pathlib import Path

import pytest

from mosaicsync.config import CONFIG_NAME, load_config
from mosaicsync.contract import SITE_EXTENSIONS
from mosaicsync.errors import ConfigError
from mosaicsync.scaffold import TemplateInfo, init_project, list_templates

REPO = Path(__file__).resolve().parent.parent


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_list_templates() -> None:
    templates = list_templates()
    assert [t.name for t in templates] == ["basic", "todo"]
    for info in templates:
        assert isinstance(info, TemplateInfo)
        assert info.description and "\n" not in info.description


def test_init_basic(tmp_path: Path) -> None:
    project = tmp_path / "my-first_site"
    created = init_project(project)
    assert tree(project) == [
        ".mosaicignore",
        "migrations",
        "mosaic.toml",
        "public",
        "public/app.js",
        "public/index.html",
        "public/logo.png",
        "public/style.css",
    ]
    assert sorted(str(p.relative_to(project)) for p in created) == [
        ".mosaicignore",
        "migrations",
        "mosaic.toml",
        "public/app.js",
        "public/index.html",
        "public/logo.png",
        "public/style.css",
    ]
    assert list((project / "migrations").iterdir()) == []
    config = load_config(project / CONFIG_NAME)
    assert config.name == "My First Site"
    assert config.project_id is None
    assert config.static_root == (project / "public").resolve()
    assert config.migrations_dir == (project / "migrations").resolve()


def test_init_todo(tmp_path: Path) -> None:
    init_project(tmp_path, template="todo", name="Todo App", project_id="spark-m2p")
    config = load_config(tmp_path / CONFIG_NAME)
    assert (config.name, config.project_id) == ("Todo App", "spark-m2p")
    [migration] = list((tmp_path / "migrations").iterdir())
    assert migration.name == "0001_create_todos.sql"
    sql = " ".join(migration.read_text().split())
    assert (
        "CREATE TABLE todos ( id SERIAL PRIMARY KEY, task TEXT NOT NULL, "
        "done BOOLEAN NOT NULL DEFAULT false, created_at TIMESTAMPTZ NOT NULL DEFAULT now() );"
    ) in sql
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == [
        "app.js",
        "index.html",
        "style.css",
    ]


@pytest.mark.parametrize("template", ["basic", "todo"])
def test_pages_are_deployable_and_hold_no_key(tmp_path: Path, template: str) -> None:
    init_project(tmp_path, template=template)
    public = tmp_path / "public"
    for path in public.rglob("*"):
        assert path.suffix in SITE_EXTENSIONS
        if path.suffix != ".png":
            text = path.read_text()
            assert "mk_" not in text
            assert "X-API-Key" not in text
            assert "api.mosaic.site" not in text
    # Every local reference in the page resolves, relative to the page.
    html = (public / "index.html").read_text()
    refs = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert refs
    for ref in refs:
        assert not ref.startswith(("/", "http")), ref
        assert (public / ref).is_file(), ref


def test_basic_links_its_assets(tmp_path: Path) -> None:
    init_project(tmp_path)
    html = (tmp_path / "public" / "index.html").read_text()
    for ref in ('href="style.css"', 'src="app.js"', 'src="logo.png"'):
        assert ref in html


def test_logo_is_a_real_png(tmp_path: Path) -> None:
    init_project(tmp_path)
    data = (tmp_path / "public" / "logo.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks[kind] = body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth, colour) == (64, 64, 8, 6)  # 64x64 RGBA
    pixels = zlib.decompress(chunks[b"IDAT"])
    assert len(pixels) == height * (1 + width * 4)
    assert list(chunks)[-1] == b"IEND"


def test_init_into_a_non_empty_folder_without_conflicts(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine")
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "about.html").write_text("mine")
    (tmp_path / "migrations").mkdir()
    created = init_project(tmp_path)
    assert (tmp_path / "README.md").read_text() == "mine"
    assert (tmp_path / "public" / "about.html").read_text() == "mine"
    assert tmp_path / "migrations" not in created
    assert tmp_path / CONFIG_NAME in created


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text("[app]\nname = 'mine'\n")
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.html").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as info:
        init_project(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in info.value.message
    assert str(tmp_path / "public" / "index.html") in info.value.message
    assert "2 existing path(s)" in info.value.message
    assert "nothing was written" in (info.value.hint or "")
    assert tree(tmp_path) == before
    assert (tmp_path / "public" / "index.html").read_text() == "mine"


def test_init_refuses_when_a_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "public").write_text("a file where the template has a folder")
    with pytest.raises(ConfigError, match="public"):
        init_project(tmp_path)
    assert tree(tmp_path) == ["public"]


def test_init_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).symlink_to(tmp_path / "elsewhere.toml")
    with pytest.raises(ConfigError, match=CONFIG_NAME):
        init_project(tmp_path)
    assert not (tmp_path / "elsewhere.toml").exists()


def test_unknown_template_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        init_project(tmp_path, template="blog")
    assert info.value.message == "unknown template 'blog'; the templates are: basic, todo"
    assert list(tmp_path.iterdir()) == []


def test_bad_project_id_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Mosaic project id"):
        init_project(tmp_path / "new", project_id="Not An Id")
    assert not (tmp_path / "new").exists()


def test_templates_hold_no_mosaic_toml() -> None:
    for template in (REPO / "templates").iterdir():
        if template.is_dir() and (template / "template.toml").is_file():
            assert not (template / CONFIG_NAME).exists()


def test_every_package_is_listed_for_the_wheel() -> None:
    """The packages are listed in pyproject.toml (templates/ lives outside mosaicsync/)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "mosaicsync").rglob("__init__.py")
    }
    assert on_disk <= packages, f"add {sorted(on_disk - packages)} to pyproject.toml"
    assert setuptools["package-dir"]["mosaicsync.templates"] == "templates"
