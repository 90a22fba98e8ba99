"""`mosaicsync init`: copy a template into a folder and write its mosaic.toml, never overwriting.

Templates ship in the package as `mosaicsync.templates` (the repository's `templates/` folder):
one folder each, described by its `template.toml`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
import tomllib
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from mosaicsync.config import (
    CONFIG_NAME,
    DEFAULT_MIGRATIONS_DIR,
    DEFAULT_STATIC_ROOT,
    render_config,
)
from mosaicsync.errors import ConfigError

TEMPLATE_PACKAGE = "mosaicsync.templates"
TEMPLATE_FILE = "template.toml"
DEFAULT_TEMPLATE = "basic"

# Left behind by Python when the templates package is imported; never part of a template.
_NOT_COPIED = frozenset({TEMPLATE_FILE, "__init__.py", "__pycache__"})


@dataclass(frozen=True)
class TemplateInfo:
    """A template's name (what `--template` takes) and its one-line description."""

    name: str
    description: str


def list_templates() -> list[TemplateInfo]:
    """Every template in the package, by name."""
    found = []
    for entry in importlib.resources.files(TEMPLATE_PACKAGE).iterdir():
        meta = entry / TEMPLATE_FILE
        if entry.is_dir() and meta.is_file():
            description = tomllib.loads(meta.read_text(encoding="utf-8")).get("description", "")
            found.append(TemplateInfo(entry.name, str(description).strip()))
    return sorted(found, key=lambda info: info.name)


def init_project(
    target_dir: Path,
    *,
    template: str = DEFAULT_TEMPLATE,
    name: str | None = None,
    project_id: str | None = None,
) -> list[Path]:
    """Copy `template` into `target_dir` and write mosaic.toml; return the paths created.

    Nothing is written if any of those paths already exists: the ConfigError lists them all.
    """
    target = Path(target_dir).absolute()
    source = _template_dir(template)
    files = dict(_template_files(source))
    static_root = DEFAULT_STATIC_ROOT if (source / DEFAULT_STATIC_ROOT).is_dir() else "."
    files[PurePosixPath(CONFIG_NAME)] = render_config(
        name or _title(target.name),
        project_id=project_id,
        static_root=static_root,
        migrations_dir=DEFAULT_MIGRATIONS_DIR,
    ).encode("utf-8")

    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file, not a folder", hint="choose a folder for init")
    conflicts = sorted({str(p) for rel in files for p in _conflicts(target, rel)})
    if conflicts:
        raise ConfigError(
            f"init would overwrite {len(conflicts)} existing path(s): {', '.join(conflicts)}",
            hint="move them away, or run init in another folder; nothing was written",
        )

    created: list[Path] = []
    folders: list[Path] = []
    try:
        for rel, data in files.items():
            path = target.joinpath(*rel.parts)
            _make_folders(path.parent, folders)
            with path.open("xb") as f:  # "x": a file that appeared meanwhile is not overwritten
                created.append(path)
                f.write(data)
        migrations = target / DEFAULT_MIGRATIONS_DIR
        if not migrations.exists():
            _make_folders(migrations, folders)
            created.append(migrations)
    except BaseException:
        # Leave the folder as it was rather than half a project.
        for path in created:
            if path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()
        for folder in reversed(folders):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return created


def _make_folders(folder: Path, made: list[Path]) -> None:
    """Create `folder` and its missing parents, noting each one made."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir()
        made.append(path)


def _template_dir(template: str) -> Traversable:
    names = [info.name for info in list_templates()]
    if template not in names:
        raise ConfigError(
            f"unknown template '{template}'; the templates are: {', '.join(names)}",
            hint="pass one of them with --template",
        )
    return importlib.resources.files(TEMPLATE_PACKAGE) / template


def _template_files(
    folder: Traversable, prefix: PurePosixPath | None = None
) -> list[tuple[PurePosixPath, bytes]]:
    """Every file of a template with its path inside it, template.toml and caches left out."""
    files = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name in _NOT_COPIED or entry.name.endswith(".pyc"):
            continue
        rel = prefix / entry.name if prefix else PurePosixPath(entry.name)
        if entry.is_dir():
            files.extend(_template_files(entry, rel))
        else:
            files.append((rel, entry.read_bytes()))
    return files


def _conflicts(target: Path, rel: PurePosixPath) -> list[Path]:
    """The existing paths that stop `rel` from being created: itself, or a parent that is a file."""
    found = []
    path = target
    for part in rel.parts[:-1]:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            found.append(path)
    path = target.joinpath(*rel.parts)
    if path.exists() or path.is_symlink():
        found.append(path)
    return found


def _title(folder_name: str) -> str:
    """'my-todo_app' -> 'My Todo App': the default app name, from the folder's name."""
    words = [w for w in re.split(r"[-_.\s]+", folder_name) if w]
    return " ".join(w[:1].upper() + w[1:] for w in words) or "My App"
