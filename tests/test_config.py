"""mosaic.toml: loading, defaults, every validation error, and edits that keep the file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaicsync.config import (
    CONFIG_NAME,
    Target,
    find_config,
    load_config,
    render_config,
    resolve_target_name,
    set_project_id,
)
from mosaicsync.errors import ConfigError

EXAMPLE = """\
# mosaic.toml (committed to git; never holds a secret)
[app]
name = "My App"
project_id = "pod-16f"        # written by `mosaicsync link` / `init --create`

[static]
root = "public"
ignore = ["drafts/", "*.psd"]  # gitignore syntax, on top of .mosaicignore and the safe defaults

[migrations]
dir = "migrations"             # files named NNNN_name.sql, applied in version order

[targets.local]                # optional: other platforms, chosen with --target NAME
api_url = "http://127.0.0.1:8787/v1/project"
project_id = "wave-x7k"        # a project on that platform
"""


def write(folder: Path, text: str, *, public: bool = True) -> Path:
    if public:
        (folder / "public").mkdir(exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.message.splitlines()


# -- loading -------------------------------------------------------------------------------------


def test_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.path == tmp_path / CONFIG_NAME
    assert config.project_dir == tmp_path.resolve()
    assert config.name == "My App"
    assert config.project_id == "pod-16f"
    assert config.static_root == (tmp_path / "public").resolve()
    assert config.static_ignore == ("drafts/", "*.psd")
    assert config.migrations_dir == (tmp_path / "migrations").resolve()
    assert config.targets == {
        "local": Target("local", "http://127.0.0.1:8787/v1/project", "wave-x7k")
    }


def test_defaults_with_public(tmp_path: Path) -> None:
    project = tmp_path / "shop-front"
    project.mkdir()
    config = load_config(write(project, "", public=True))
    assert config.name == "shop-front"
    assert config.project_id is None
    assert config.static_root == (project / "public").resolve()
    assert config.static_ignore == ()
    assert config.migrations_dir == (project / "migrations").resolve()
    assert config.targets == {}


def test_static_root_defaults_to_project_dir_without_public(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[app]\nname = 'x'\n", public=False))
    assert config.static_root == tmp_path.resolve()


def test_targets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE.replace("v1/project", "v1/project//")))
    assert config.target(None) == Target("default", None, "pod-16f")
    assert config.target("local").api_url == "http://127.0.0.1:8787/v1/project"
    with pytest.raises(ConfigError, match="the targets defined are: local"):
        config.target("prod")


def test_unknown_target_without_targets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="defines no targets") as info:
        config.target("prod")
    assert "[targets.prod]" in (info.value.hint or "")


def test_target_never_borrows_the_app_project_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[app]\nproject_id = "pod-16f"\n[targets.local]\n'))
    assert config.target("local") == Target("local", None, None)


def test_target_name_from_flag_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_target_name(None) is None
    monkeypatch.setenv("MOSAIC_TARGET", "local")
    assert resolve_target_name(None) == "local"
    assert resolve_target_name("prod") == "prod"


def test_find_config_walks_up(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    deep = tmp_path / "public" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) == path
    assert find_config(tmp_path) == path


def test_find_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path)
    assert info.value.message == (
        f"no mosaic.toml in {tmp_path} or its parents; run `mosaicsync init` or pass --config"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; run `mosaicsync init`"):
        load_config(tmp_path / CONFIG_NAME)


# -- validation ----------------------------------------------------------------------------------

# (mosaic.toml text, the "where" of the problem, words of the problem, words of the fix)
BAD = [
    ("[statc]\n", "[statc]", "unknown key 'statc' (did you mean 'static'?)", "[static]"),
    ("[static]\nrot = 'public'\n", "[static] rot", "did you mean 'root'?", "root, ignore"),
    ("name = 'x'\n", "name", "did you mean [app] name?", "tables of mosaic.toml"),
    ("[app]\nroot = 'x'\n", "[app] root", "did you mean [static] root?", "name, project_id"),
    ("[app]\nname = 3\n", "[app] name", "expected a string, got an integer", 'name = "My App"'),
    ("[app]\nname = ''\n", "[app] name", "is empty", "give the app a name"),
    ("app = 'x'\n", "app", "expected a table, got a string", "write it as [app]"),
    ("[app]\nproject_id = 'POD-16F'\n", "[app] project_id", "'POD-16F' is not", "link"),
    ("[app]\nproject_id = 7\n", "[app] project_id", "got an integer", "project_id ="),
    ("[static]\nroot = true\n", "[static] root", "got a boolean", 'root = "public"'),
    ("[static]\nroot = 'site'\n", "[static] root", "'site' does not exist", "create the folder"),
    ("[static]\nroot = 'f.txt'\n", "[static] root", "is a file, not a folder", "set root"),
    ("[static]\nroot = '..'\n", "[static] root", "outside the project folder", "inside"),
    ("[static]\nroot = ''\n", "[static] root", "is empty", 'root = "."'),
    ("[static]\nignore = '*.psd'\n", "[static] ignore", "expected an array", "ignore = ["),
    ("[static]\nignore = ['a', 1]\n", "[static] ignore[1]", "got an integer", "gitignore"),
    ("[static]\nignore = ['!']\n", "[static] ignore[0]", "not a valid gitignore", "gitignore"),
    ("[migrations]\ndir = 1.5\n", "[migrations] dir", "got a float", 'dir = "migrations"'),
    ("[migrations]\ndir = 'f.txt'\n", "[migrations] dir", "is a file", "NNNN_name.sql"),
    ("[migrations]\ndirectory = 'm'\n", "[migrations] directory", "unknown key", "dir"),
    ("[migrations]\ndir = '../sql'\n", "[migrations] dir", "outside the project folder", "inside"),
    ("[migrations]\ndir = 'db/../../sql'\n", "[migrations] dir", "outside the project", "inside"),
    ("[migrations]\ndir = '/etc'\n", "[migrations] dir", "'/etc' resolves to", 'dir = "m'),
    ("targets = 1\n", "targets", "expected a table", "[targets]"),
    ("[targets]\nlocal = 'x'\n", "[targets.local]", "expected a table", "api_url ="),
    ("[targets.a]\napi_url = 'ftp://h/v1'\n", "[targets.a] api_url", "not an http(s)", "e.g."),
    ("[targets.a]\napi_url = 'http:///v1'\n", "[targets.a] api_url", "no host", "base URL"),
    ("[targets.a]\napi_url = 'http://h/v1?x=1'\n", "[targets.a] api_url", "query", "base URL"),
    ("[targets.a]\nproject_id = 'nope'\n", "[targets.a] project_id", "not a Mosaic", "link"),
    ("[targets.a]\nprojectid = 'x'\n", "[targets.a] projectid", "'project_id'?", "api_url"),
    ("[app]\ntoken = 'mk_abcdef123'\n", "[app] token", "looks like an API key", "login"),
    ("[targets.a]\napi_url = 'mk_abcdef123'\n", "[targets.a] api_url", "API key", "KEY"),
    ("[static]\nignore = ['x', 'mk_abcdef123']\n", "[static] ignore", "API key", "git"),
    ("key = 'mk_abcdef123'\n", "key", "looks like an API key", "MOSAIC_API_KEY"),
    ("[app]\nname = x\n", "line 2, column 8", "invalid TOML: Invalid value", "fix the syntax"),
    ('[app]\nname = """x\n', "end of file", "invalid TOML", "fix the syntax"),
    ("[app\n", "line 1, column", "invalid TOML", "fix the syntax"),
]


@pytest.mark.parametrize(("text", "where", "problem", "fix"), BAD)
def test_each_problem_names_file_key_and_fix(
    tmp_path: Path, text: str, where: str, problem: str, fix: str
) -> None:
    (tmp_path / "f.txt").write_text("not a folder")
    [line] = problems(write(tmp_path, text))
    assert line.startswith(f"mosaic.toml: {where}")
    head, _, tail = line.partition("; ")
    assert problem in head
    assert fix in tail
    assert "mk_abcdef123" not in line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[statc]
[app]
project_id = "bad"
[static]
root = "missing"
[targets.prod]
api_url = "ftp://x"
""",
    )
    lines = problems(path)
    assert [line.split(": ")[1] for line in lines] == [
        "[statc]",
        "[app] project_id",
        "[static] root",
        "[targets.prod] api_url",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.hint == f"edit {path}"


def test_static_root_symlink_out_of_the_project(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "site").symlink_to(outside)
    [line] = problems(write(project, "[static]\nroot = 'site'\n", public=False))
    assert line.startswith("mosaic.toml: [static] root: 'site' resolves to")
    assert "symlinks are followed" in line


def test_migrations_dir_symlink_out_of_the_project(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "db").symlink_to(outside)
    [line] = problems(write(project, "[migrations]\ndir = 'db'\n", public=False))
    assert line.startswith("mosaic.toml: [migrations] dir: 'db' resolves to")
    assert "outside the project folder" in line
    assert "symlinks are followed" in line


def test_migrations_dir_inside_the_project_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "db").symlink_to(tmp_path / "sql")
    config = load_config(write(tmp_path, "[migrations]\ndir = 'db'\n"))
    assert config.migrations_dir == (tmp_path / "sql").resolve()


def test_static_root_symlink_inside_the_project(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "site").symlink_to(tmp_path / "build")
    config = load_config(write(tmp_path, "[static]\nroot = 'site'\n"))
    assert config.static_root == (tmp_path / "build").resolve()


def test_secret_is_never_echoed(tmp_path: Path) -> None:
    secret = "mk_live_0123456789abcdef"
    path = write(tmp_path, f'[app]\nname = "x"\napi_key = "{secret}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert secret not in str(info.value)
    assert "[app] api_key: looks like an API key" in str(info.value)
    # Reported once, as a secret, not again as an unknown key.
    assert len(info.value.message.splitlines()) == 1


def test_url_password_is_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "[targets.a]\napi_url = 'https://me:hunter22@h/v1'\n")
    [line] = problems(path)
    assert "hunter22" not in line
    assert "user name or password" in line


# -- render_config -------------------------------------------------------------------------------


def test_render_config_loads_back(tmp_path: Path) -> None:
    text = render_config('Ada\'s "App"', project_id="pod-16f")
    assert "never holds a secret" in text
    config = load_config(write(tmp_path, text))
    assert config.name == 'Ada\'s "App"'
    assert config.project_id == "pod-16f"
    assert config.static_root == (tmp_path / "public").resolve()
    assert config.migrations_dir == (tmp_path / "migrations").resolve()


def test_render_config_without_project_id(tmp_path: Path) -> None:
    text = render_config("x", static_root=".", migrations_dir="db")
    assert tomllib.loads(text) == {
        "app": {"name": "x"},
        "static": {"root": ".", "ignore": []},
        "migrations": {"dir": "db"},
    }


def test_render_config_rejects_a_bad_project_id() -> None:
    with pytest.raises(ConfigError, match="not a Mosaic project id"):
        render_config("x", project_id="Pod 16f")


# -- set_project_id ------------------------------------------------------------------------------


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b), "the edit added or removed lines"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_set_project_id_replaces_one_line_and_keeps_its_comment(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    set_project_id(path, "spark-m2p")
    after = path.read_text()
    assert changed_lines(EXAMPLE, after) == [
        (
            'project_id = "pod-16f"        # written by `mosaicsync link` / `init --create`\n',
            'project_id = "spark-m2p"      # written by `mosaicsync link` / `init --create`\n',
        )
    ]
    assert load_config(path).project_id == "spark-m2p"


def test_set_project_id_for_a_target(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    set_project_id(path, "bolt-9zz", target="local")
    [(old, new)] = changed_lines(EXAMPLE, path.read_text())
    assert old.startswith('project_id = "wave-x7k"        #')
    assert new.startswith('project_id = "bolt-9zz"        #')
    config = load_config(path)
    assert config.project_id == "pod-16f"
    assert config.target("local").project_id == "bolt-9zz"


def test_set_project_id_inserts_after_the_header(tmp_path: Path) -> None:
    before = '# top\n[app]  # the app\nname = "x"  # keep\n\n[static]\nroot = "."\n'
    path = write(tmp_path, before)
    set_project_id(path, "pod-16f")
    assert path.read_text() == (
        '# top\n[app]  # the app\nproject_id = "pod-16f"\nname = "x"  # keep\n\n'
        '[static]\nroot = "."\n'
    )


def test_set_project_id_inserts_into_an_existing_target(tmp_path: Path) -> None:
    before = EXAMPLE.replace('project_id = "wave-x7k"        # a project on that platform\n', "")
    path = write(tmp_path, before)
    set_project_id(path, "bolt-9zz", target="local")
    after = path.read_text()
    assert after == before.replace("--target NAME\n", '--target NAME\nproject_id = "bolt-9zz"\n')


def test_set_project_id_appends_a_missing_table(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    set_project_id(path, "bolt-9zz", target="prod")
    assert path.read_text() == EXAMPLE + '\n[targets.prod]\nproject_id = "bolt-9zz"\n'
    set_project_id(path, "bolt-9zy", target="my prod")
    assert path.read_text().endswith('\n\n[targets."my prod"]\nproject_id = "bolt-9zy"\n')
    assert load_config(path).target("my prod").project_id == "bolt-9zy"


def test_set_project_id_appends_app_to_a_file_without_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[static]\nroot = "public"')  # no final newline
    set_project_id(path, "pod-16f")
    assert path.read_text() == '[static]\nroot = "public"\n\n[app]\nproject_id = "pod-16f"\n'


def test_set_project_id_keeps_crlf_and_literal_quotes(tmp_path: Path) -> None:
    before = "[app]\r\nname = 'x'\r\nproject_id = 'pod-16f' # c\r\n"
    path = tmp_path / CONFIG_NAME
    path.write_bytes(before.encode())
    set_project_id(path, "spark-m2p")
    assert path.read_bytes() == b"[app]\r\nname = 'x'\r\nproject_id = 'spark-m2p' # c\r\n"
    set_project_id(path, "bolt-9zz", target="local")
    assert path.read_bytes().endswith(b'\r\n\r\n[targets.local]\r\nproject_id = "bolt-9zz"\r\n')


def test_set_project_id_is_not_fooled_by_strings_and_arrays(tmp_path: Path) -> None:
    before = '''\
[static]
ignore = [
  "[app]",   # a comment ] with a bracket
  "project_id = 'x'",
]
[app]
name = """
[targets.local]
project_id = "pod-16f"
"""
'''
    path = write(tmp_path, before)
    set_project_id(path, "spark-m2p", target="local")
    set_project_id(path, "bolt-9zz")
    after = path.read_text()
    assert after.startswith(before.replace("[app]\nname", '[app]\nproject_id = "bolt-9zz"\nname'))
    doc = tomllib.loads(after)
    assert doc["app"]["name"] == '[targets.local]\nproject_id = "pod-16f"\n'
    assert doc["targets"]["local"]["project_id"] == "spark-m2p"


def test_set_project_id_with_dotted_keys(tmp_path: Path) -> None:
    before = 'app.name = "x"\n\n[targets]\nlocal.api_url = "http://127.0.0.1:8787/v1/project"\n'
    path = write(tmp_path, before)
    set_project_id(path, "pod-16f")
    set_project_id(path, "bolt-9zz", target="local")
    assert path.read_text() == (
        'app.name = "x"\napp.project_id = "pod-16f"\n\n[targets]\n'
        'local.api_url = "http://127.0.0.1:8787/v1/project"\nlocal.project_id = "bolt-9zz"\n'
    )


@pytest.mark.parametrize(
    ("before", "target"),
    [
        ('[[targets.local]]\napi_url = "http://127.0.0.1:8787/v1/project"\n', "local"),
        ('app = "My App"\n', None),
        ("targets = []\n", "local"),
    ],
)
def test_set_project_id_refuses_a_table_that_is_not_one_and_leaves_the_file(
    tmp_path: Path, before: str, target: str | None
) -> None:
    path = write(tmp_path, before)
    with pytest.raises(ConfigError, match="cannot edit safely") as info:
        set_project_id(path, "bolt-9zz", target=target)
    assert 'project_id = "bolt-9zz"' in (info.value.hint or "")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_set_project_id_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    path.chmod(0o640)
    set_project_id(path, "spark-m2p")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, "public"]


def test_set_project_id_edits_through_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path, EXAMPLE)
    other = tmp_path / "other"
    other.mkdir()
    link = other / CONFIG_NAME
    link.symlink_to(real)
    set_project_id(link, "spark-m2p")
    assert link.is_symlink()
    assert 'project_id = "spark-m2p"' in real.read_text()


@pytest.mark.parametrize("bad", ["POD-16F", "pod16f", "pod-16f\n", "", "mk_abc"])
def test_set_project_id_rejects_a_bad_id(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError, match="not a Mosaic project id"):
        set_project_id(path, bad)
    assert path.read_text() == EXAMPLE


def test_set_project_id_reports_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[app\n")
    with pytest.raises(ConfigError, match="line 1, column"):
        set_project_id(path, "pod-16f")


# Each edit: the text before, the target, the exact text after. The test also checks that tomllib
# reads the result as the old document with that one value set.
EDITS = [
    pytest.param(
        '# who we are\n\n[app]   # the app\n\n# its name\nname = "x"   # shown in the dashboard\n'
        '\n\n# where it goes\n[static]\nroot = "."\n',
        None,
        '# who we are\n\n[app]   # the app\nproject_id = "spark-m2p"\n\n# its name\n'
        'name = "x"   # shown in the dashboard\n\n\n# where it goes\n[static]\nroot = "."\n',
        id="comments-and-blank-lines",
    ),
    pytest.param(
        '[app]\nproject_id = "pod-16f"  # a comment\n',
        None,
        '[app]\nproject_id = "spark-m2p" # a comment\n',
        id="comment-pushed-when-no-room",
    ),
    pytest.param(
        '  [app]\n  name = "y"\n',
        None,
        '  [app]\n  project_id = "spark-m2p"\n  name = "y"\n',
        id="indented",
    ),
    pytest.param(
        'targets = { local = { project_id = "wave-x7k" } }\n',
        "local",
        'targets = { local = { project_id = "spark-m2p" } }\n',
        id="nested-inline-replace",
    ),
    pytest.param(
        'targets = { local = { api_url = "http://127.0.0.1:8787/v1/project" } }\n',
        "local",
        'targets = { local = { api_url = "http://127.0.0.1:8787/v1/project", '
        'project_id = "spark-m2p" } }\n',
        id="nested-inline-add",
    ),
    pytest.param(
        'targets = { local = { project_id = "wave-x7k" } }\n',
        "prod",
        'targets = { local = { project_id = "wave-x7k" }, prod = {project_id = "spark-m2p"} }\n',
        id="nested-inline-new-target",
    ),
    pytest.param(
        '[targets]\nlocal = {api_url = "http://127.0.0.1:8787/v1/project"}  # c\n'
        'stage = { project_id = "ab-1" }\n',
        "local",
        '[targets]\nlocal = {api_url = "http://127.0.0.1:8787/v1/project", '
        'project_id = "spark-m2p"}  # c\nstage = { project_id = "ab-1" }\n',
        id="inline-in-a-table",
    ),
    pytest.param(
        'app = { name = "x" }\n',
        None,
        'app = { name = "x", project_id = "spark-m2p" }\n',
        id="inline-app",
    ),
    pytest.param(
        '[app]\nname = "x"\n\n[targets.local]\napi_url = "http://127.0.0.1:8787/v1/project"\n'
        '\n# where it goes\n[static]\nroot = "."\n',
        "prod",
        '[app]\nname = "x"\n\n[targets.local]\napi_url = "http://127.0.0.1:8787/v1/project"\n'
        '\n# where it goes\n[static]\nroot = "."\n\n[targets.prod]\nproject_id = "spark-m2p"\n',
        id="new-target-at-the-end",
    ),
    pytest.param(
        '# c\r\n[app]\r\nname = "x"  # n\r\n\r\n[targets.local]  # t\r\n'
        'api_url = "http://127.0.0.1:8787/v1/project"\r\n',
        "local",
        '# c\r\n[app]\r\nname = "x"  # n\r\n\r\n[targets.local]  # t\r\n'
        'project_id = "spark-m2p"\r\napi_url = "http://127.0.0.1:8787/v1/project"\r\n',
        id="crlf-add-to-a-table",
    ),
    pytest.param(
        '# c\r\n[app]\r\nname = "x"  # n\r\n\r\n[static]\r\nroot = "."\r\n',
        "prod",
        '# c\r\n[app]\r\nname = "x"  # n\r\n\r\n[static]\r\nroot = "."\r\n'
        '\r\n[targets.prod]\r\nproject_id = "spark-m2p"\r\n',
        id="crlf-new-table",
    ),
    pytest.param(
        '[app]\r\nproject_id = "pod-16f"',
        None,
        '[app]\r\nproject_id = "spark-m2p"',
        id="crlf-no-eol",
    ),
]


@pytest.mark.parametrize(("before", "target", "after"), EDITS)
def test_set_project_id_edits(tmp_path: Path, before: str, target: str | None, after: str) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_bytes(before.encode())
    set_project_id(path, "spark-m2p", target=target)
    assert path.read_bytes().decode() == after
    expected = tomllib.loads(before)
    node = expected
    for key in ("app",) if target is None else ("targets", target):
        node = node.setdefault(key, {})
    node["project_id"] = "spark-m2p"
    assert tomllib.loads(after) == expected
    assert os.listdir(tmp_path) == [CONFIG_NAME]


def test_set_project_id_edits_a_rendered_config_twice(tmp_path: Path) -> None:
    text = render_config("My App")
    path = write(tmp_path, text)
    set_project_id(path, "pod-16f")
    set_project_id(path, "wave-x7k", target="local")
    after = path.read_text()
    assert after == text.replace("[app]\n", '[app]\nproject_id = "pod-16f"\n') + (
        '\n[targets.local]\nproject_id = "wave-x7k"\n'
    )
    assert load_config(path).target("local").project_id == "wave-x7k"


# Any document tomli-w can write, with keys and strings full of TOML syntax, is edited exactly.
_text = st.text(alphabet="ab[]{}#='\"\\\n .,:-_", max_size=12)
_values = st.recursive(
    st.one_of(_text, st.integers(), st.booleans(), st.lists(_text, max_size=3)),
    lambda inner: st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "app": st.dictionaries(_text, _values, max_size=3),
        "targets": st.dictionaries(_text, st.dictionaries(_text, _values, max_size=3), max_size=3),
        "static": st.dictionaries(_text, _values, max_size=3),
    },
)


@settings(max_examples=150, deadline=None)
@given(doc=_documents, target=st.one_of(st.none(), _text), project_id=st.sampled_from(["a-b1c"]))
def test_set_project_id_on_generated_documents(
    doc: dict, target: str | None, project_id: str
) -> None:
    text = tomli_w.dumps(doc, multiline_strings=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CONFIG_NAME
        path.write_text(text)
        table_keys = ("app",) if target is None else ("targets", target)
        node = doc
        for key in table_keys:
            node = node.get(key, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return  # the table is some other type: nothing sensible to edit
        set_project_id(path, project_id, target=target)
        after = tomllib.loads(path.read_text())
        for key in table_keys:
            after = after[key]
        assert after["project_id"] == project_id
        assert os.listdir(folder) == [CONFIG_NAME]


# -- nesting and byte order marks ------------------------------------------------------------------

DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"


@pytest.mark.parametrize(
    "text", [DEEP, "x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n"], ids=["arrays", "tables"]
)
def test_a_file_nested_thousands_deep_is_a_config_error(tmp_path: Path, text: str) -> None:
    # tomllib recurses once per level and hits Python's recursion limit (RecursionError).
    path = write(tmp_path, text)
    assert problems(path) == ["mosaic.toml: values nested too deeply (TOML nested thousands "
                              "of levels); flatten the arrays and tables"]  # fmt: skip
    with pytest.raises(ConfigError, match="nested too deeply"):
        set_project_id(path, "pod-16f")
    assert path.read_text() == text


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    # Notepad and other Windows editors start UTF-8 files with EF BB BF; tomllib refused it with
    # "line 1, column 1: Invalid statement".
    path = write(tmp_path, "\ufeff" + EXAMPLE)
    config = load_config(path)
    assert (config.name, config.project_id) == ("My App", "pod-16f")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_set_project_id_keeps_the_byte_order_mark(tmp_path: Path, newline: str) -> None:
    (tmp_path / "public").mkdir()
    path = tmp_path / CONFIG_NAME
    path.write_bytes(("\ufeff" + EXAMPLE).replace("\n", newline).encode())
    set_project_id(path, "new-42x")
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\xef\xbb\xbf") == 1
    assert data.decode("utf-8-sig") == EXAMPLE.replace('"pod-16f"', '"new-42x"').replace(
        "\n", newline
    )
    assert load_config(path).project_id == "new-42x"


def test_loading_a_config_imports_no_writer_or_suggester() -> None:
    """Every command loads mosaic.toml: tomli-w (writing) and difflib (a typo's suggestion) are
    imported when they are used, not at every start."""
    code = (
        "import sys, mosaicsync.config, mosaicsync.cli, mosaicsync.deploy, mosaicsync.output; "
        "print(sorted({'tomli_w', 'difflib'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
