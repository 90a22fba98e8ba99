"""Every `mosaicsync ...` command line shown to users parses with the real CLI.

Pages, the README, `--help` examples and error hints name commands by hand; this module
collects them and asks click to parse each one (unknown options, missing arguments, unknown
subcommands and a bare group all fail) without running it.

Where command lines are looked for:
- templates/**: the text of `<code>` elements in HTML, `backticked` spans elsewhere;
- README.md and docs/**: every line of a sh/bash/shell/console (or unlabelled) fenced block,
  `run:` lines of YAML workflows, `backticked` spans everywhere else (`\\|` is a table's `|`);
- `--help`: the indented lines under `Example:` and `backticked` spans, of every command and
  option of `mosaicsync.cli:cli`;
- string literals of mosaicsync/**/*.py: `backticked` spans, and a `mosaicsync` that follows a
  shell operator (`cd DIR && mosaicsync deploy`). An f-string's `{...}` is an argument, unless
  it names a module-level string constant of the package, which is inlined. Unquoted
  "mosaicsync" in prose is the program's name, not a command line.

Notation understood in a command line:
- shell: `&&`, `||`, `;`, `|` and `&` separate commands, `$(...)` is a command of its own,
  redirections and `#` comments are dropped, `VAR=value` prefixes are skipped; only commands
  whose program is `mosaicsync` (any path to it, or `python -m mosaicsync`) with at least one
  argument are checked;
- placeholders: an upper-case word (`NAME`, `V`, `PROJECT_ID`), `<word>` and `{...}` stand
  for an argument and are replaced by a sample value;
- `[...]` is optional: checked both without and with its content; a bare group (`mosaicsync
  migrate`) passes only where an optional part was left out;
- `a|b` (no spaces around `|`) lists alternatives: values of the option before it
  (`--template basic|todo`), else subcommands of the group named before it
  (`migrate new NAME|status|up` is `migrate new NAME`, `migrate status`, `migrate up`).
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest

from mosaicsync.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "mosaicsync"
SAMPLE = "1"  # parses as an int, a float, a name, an id and a file name alike
ALT = "\x1f"  # stands for an alternatives `|` while the line goes through shlex
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
REDIRECTIONS = {">", ">>", "<", "<<", "<<<", ">&", "<&", "&>", ">|"}


@dataclass(frozen=True)
class Shown:
    """A piece of text shown to users that may hold command lines, and where it is."""

    where: str
    text: str
    bare: bool = False  # a backticked span may leave out the program: `deploy --dry-run`


# -- collecting ------------------------------------------------------------------------------------


def backticked(
    text: str, where: str, first_line: int | None = None, bare: bool = True
) -> Iterator[Shown]:
    for match in re.finditer(r"`([^`]+)`", text):
        line = ""
        if first_line is not None:
            line = f":{first_line + text.count(chr(10), 0, match.start())}"
        span = match.group(1).replace("\\|", "|").replace("\n", " ")
        yield Shown(f"{where}{line}", span, bare=bare)


class _CodeText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "code":
            self._depth += 1
            self.found.append((self.getpos()[0], ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            line, text = self.found[-1]
            self.found[-1] = (line, text + data)


def from_template(path: Path) -> list[Shown]:
    where = str(path.relative_to(ROOT))
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return []  # an image
    if path.suffix == ".html":
        parser = _CodeText()
        parser.feed(text)
        return [
            Shown(f"{where}:{line + i}", part)
            for line, code in parser.found
            for i, part in enumerate(code.splitlines())
        ]
    return list(backticked(text, where, 1))


def from_markdown(path: Path) -> list[Shown]:
    where = str(path.relative_to(ROOT))
    prose: list[str] = []
    found: list[Shown] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = line.strip().strip("`").strip().lower() if fence is None else None
            prose.append("")
        elif fence in SHELL_FENCES:
            found.append(Shown(f"{where}:{number}", re.sub(r"^\s*\$ ", "", line)))
            prose.append("")
        else:
            prose.append(line)
    return found + list(backticked("\n".join(prose), where, 1))


def from_docs_file(path: Path) -> list[Shown]:
    if path.suffix == ".md":
        return from_markdown(path)
    where = str(path.relative_to(ROOT))
    text = path.read_text()
    if path.suffix in {".yml", ".yaml"}:
        return [
            Shown(f"{where}:{number}", match.group(1))
            for number, line in enumerate(text.splitlines(), 1)
            # a `run:` line, or a command line inside a `run: |` block
            if (
                match := re.match(r"\s*-?\s*run:\s*(.+)", line)
                or re.match(r"\s+(mosaicsync .+)", line)
            )
        ]
    return list(backticked(text, where, 1))


def example_lines(text: str) -> Iterator[str]:
    """The indented lines under an `Example:` heading of a help text, up to a blank line."""
    inside = False
    for line in text.replace("\b", "").splitlines():
        if re.match(r"\s*Examples?:\s*$", line):
            inside = True
        elif not line.strip():
            inside = False
        elif inside:
            yield line.strip()


def commands(
    command: click.Command = cli, path: tuple[str, ...] = (PROGRAM,)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None
            yield from commands(sub, (*path, name))


def help_where(path: tuple[str, ...], command: click.Command) -> str:
    function = inspect.unwrap(command.callback) if command.callback else None
    try:
        source = Path(inspect.getsourcefile(function)).resolve()  # type: ignore[arg-type]
        line = inspect.getsourcelines(function)[1]  # type: ignore[arg-type]
        place = f"{source.relative_to(ROOT)}:{line} "
    except (TypeError, OSError, ValueError):
        place = ""
    return f"{place}(help of `{' '.join(path)}`)"


def from_help(path: tuple[str, ...], command: click.Command) -> list[Shown]:
    where = help_where(path, command)
    texts = [command.help or "", command.epilog or ""]
    texts += [p.help or "" for p in command.params if isinstance(p, click.Option)]
    found = [Shown(where, line) for line in example_lines(texts[0])]
    for text in texts:
        found += backticked(text, where)
    return found


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def string_constants() -> dict[str, str]:
    """Module-level `NAME = "..."` strings of the package, which f-strings may name."""
    constants: dict[str, str] = {}
    for path in sorted((ROOT / "mosaicsync").rglob("*.py")):
        for node in parsed(path).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                constants.setdefault(node.targets[0].id, node.value.value)
    return constants


def string_literals(
    nodes: list[ast.AST], constants: dict[str, str]
) -> Iterator[tuple[ast.AST, int, str]]:
    """Each string literal, its line and text; an f-string's `{...}` parts become `{}`."""
    inside_fstrings = {
        id(part)
        for node in nodes
        if isinstance(node, ast.JoinedStr)
        for part in ast.walk(node)
        if part is not node
    }
    for node in nodes:
        if id(node) in inside_fstrings:
            continue
        if isinstance(node, ast.JoinedStr):
            text = ""
            for part in node.values:
                if isinstance(part, ast.Constant):
                    text += str(part.value)
                elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name):
                    text += constants.get(part.value.id, "{}")
                else:
                    text += "{}"
            yield node, node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node, node.lineno, node.value


def docstrings(nodes: list[ast.AST]) -> set[int]:
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in nodes
        if isinstance(node, scopes)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def from_module(path: Path, constants: dict[str, str]) -> list[Shown]:
    found: list[Shown] = []
    nodes = list(ast.walk(parsed(path)))
    # docstrings speak to developers: there `ticket --diagnostics` names a flag
    for_developers = docstrings(nodes)
    for node, line, text in string_literals(nodes, constants):
        where = f"{path.relative_to(ROOT)}:{line}"
        found += backticked(text, where, bare=id(node) not in for_developers)
        after_operator = r"(?:&&|\|\||;|(?<=\s)\|(?=\s))\s*((?:\S*/)?mosaicsync\s[^\n`]*)"
        found += [Shown(where, m.group(1)) for m in re.finditer(after_operator, text)]
    return found


def collect() -> dict[str, list[Shown]]:
    """Source name -> what it shows, for every source of command lines."""
    sources: dict[str, list[Shown]] = {}
    for path in sorted((ROOT / "templates").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py":
            sources[str(path.relative_to(ROOT))] = from_template(path)
    sources["README.md"] = from_markdown(ROOT / "README.md")
    for path in sorted((ROOT / "docs").rglob("*")):
        if path.is_file():
            sources[str(path.relative_to(ROOT))] = from_docs_file(path)
    for path, command in commands():
        sources["help: " + " ".join(path)] = from_help(path, command)
    constants = string_constants()
    for path in sorted((ROOT / "mosaicsync").rglob("*.py")):
        sources[str(path.relative_to(ROOT))] = from_module(path, constants)
    return sources


# -- reading a command line ------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """One invocation to parse: the words after the program name."""

    words: tuple[str, ...]
    optional_left_out: bool = False


def optional_variants(text: str) -> list[tuple[str, bool]]:
    """`[...]` left out everywhere, and kept everywhere (brackets dropped)."""
    if not re.search(r"\[[^\[\]]*\]", text):
        return [(text, False)]
    return [
        (re.sub(r"\[[^\[\]]*\]", " ", text), True),
        (re.sub(r"\[([^\[\]]*)\]", r"\1", text), False),
    ]


def simple_commands(text: str) -> Iterator[list[str]]:
    """The words of each simple command of a shell line (`$(...)` yields its own)."""
    for inner in re.findall(r"\$\(([^()]*)\)", text):
        yield from simple_commands(inner)
    text = re.sub(r"\$\([^()]*\)", "X", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    current: list[str] = []
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            yield current
            current = []
        elif token in REDIRECTIONS:
            skip_next = True
        else:
            current.append(token)
    yield current


def program_arguments(words: list[str], bare: bool) -> list[str] | None:
    """The arguments of a `mosaicsync` invocation, or None for another program.

    With `bare`, a command and then an option or a subcommand (`migrate unlock`) is one too."""
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):
        words = words[1:]
    if not words:
        return None
    if Path(words[0]).name == PROGRAM:
        return words[1:]
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", PROGRAM]:
        return words[3:]
    command = cli.get_command(click.Context(cli), words[0])
    if bare and command and len(words) > 1:
        if words[1].startswith("-"):
            return words
        if isinstance(command, click.Group) and words[1].split(ALT)[0] in command.commands:
            return words
    return None


def placeholder(word: str) -> str:
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", word):
        return SAMPLE
    return re.sub(r"^(--[\w-]+=)[A-Z][A-Z0-9_]*$", rf"\g<1>{SAMPLE}", word)


def group_depth(words: list[str]) -> int:
    """How many leading words name groups: the alternatives after them are subcommands."""
    command: click.Command | None = cli
    depth = 0
    while depth < len(words) and isinstance(command, click.Group):
        command = command.get_command(click.Context(command), words[depth])
        if not isinstance(command, click.Group):
            break
        depth += 1
    return depth


def alternatives(words: list[str]) -> list[list[str]]:
    """Expand `a|b`: values of the option before it, else subcommands of the group before it."""
    choices = [
        w.split(ALT) if i and words[i - 1].startswith("-") and w.strip(ALT) == w else [w]
        for i, w in enumerate(words)
    ]
    width = max((len(c) for c in choices), default=1)
    lines = [[c[min(k, len(c) - 1)] for c in choices] for k in range(width)]
    expanded: list[list[str]] = []
    for line in lines:
        if not any(ALT in w for w in line):
            expanded.append(line)
            continue
        depth = group_depth(line)
        branches: list[list[str]] = [[]]
        for word in line[depth:]:
            first, *others = word.split(ALT)
            if first:
                branches[-1].append(first)
            branches += [[other] if other else [] for other in others]
        expanded += [line[:depth] + branch for branch in branches]
    return expanded


def command_lines(shown: Shown) -> list[CommandLine]:
    """The `mosaicsync` invocations a shown text stands for, placeholders filled in."""
    text = re.sub(r"<[A-Za-z][\w-]*>|\{[^{}]*\}", SAMPLE, shown.text)
    text = re.sub(r"(?<=[^\s|])\|(?=[^\s|])", ALT, text)
    # `[--name N]|rm NAME`: an alternative next to a bracket is not the option's value
    text = text.replace("]" + ALT, "] " + ALT).replace(ALT + "[", ALT + " [")
    found: list[CommandLine] = []
    for variant, left_out in optional_variants(text):
        for words in simple_commands(variant):
            arguments = program_arguments(words, shown.bare)
            if not arguments:
                continue  # another program, or the program's bare name
            for line in alternatives(arguments):
                words_ = tuple(placeholder(w) for w in line)
                found.append(CommandLine(words_, left_out))
    return found


# -- parsing with the real CLI ---------------------------------------------------------------------


def without_file_checks(command: click.Command) -> click.Command:
    """The command with path and file arguments taken as text: example files need not exist."""
    lenient = copy.copy(command)
    lenient.params = []
    for param in command.params:
        if isinstance(param.type, click.Path | click.File):
            param = copy.copy(param)
            param.type = click.STRING
        lenient.params.append(param)
    return lenient


def parse_error(line: CommandLine) -> str | None:
    """None if `mosaicsync WORDS` parses (nothing runs), else what click says is wrong."""
    command: click.Command = cli
    name, args, parent = PROGRAM, list(line.words), None
    try:
        while True:
            # A group that runs on its own (`deploys`, `preview`) is a command as well.
            runs_alone = isinstance(command, click.Group) and (
                command.invoke_without_command or getattr(command, "default_command", None)
            )
            if isinstance(command, click.Group) and not args and not runs_alone:
                if line.optional_left_out:
                    return None
                names = ", ".join(command.list_commands(click.Context(command)))
                path = parent.command_path + " " + name if parent else name
                return f"`{path}` is a group: it only prints its help (commands: {names})"
            ctx = without_file_checks(command).make_context(
                name, list(args), parent=parent, resilient_parsing=False
            )
            if not isinstance(command, click.Group):
                return None
            # click holds the subcommand back until it invokes the group: in `_protected_args`
            # since click 8.2, in `protected_args` (now deprecated) before
            held = vars(ctx).get("_protected_args", vars(ctx).get("protected_args", []))
            rest = [*held, *ctx.args]
            if not rest:
                if runs_alone:
                    return None
                return f"`{ctx.command_path}` names none of its commands"
            found_name, found, args = command.resolve_command(ctx, rest)
            assert found_name is not None and found is not None
            name, command, parent = found_name, found, ctx
    except click.exceptions.Exit as exc:  # --help, --version
        return None if exc.exit_code == 0 else f"exits with {exc.exit_code}"
    except click.UsageError as exc:
        return exc.format_message()


def problems(shown_texts: list[Shown]) -> list[str]:
    found = []
    for shown in shown_texts:
        try:
            lines = command_lines(shown)
        except ValueError as exc:  # shlex: an unclosed quote
            if PROGRAM in shown.text:
                found.append(f"{shown.where}: `{shown.text}`: cannot be split: {exc}")
            continue
        for line in lines:
            error = parse_error(line)
            if error:
                argv = shlex.join([PROGRAM, *line.words])
                text = shown.text.strip()
                parsed = "" if argv == text else f" (read as: {argv})"
                found.append(f"{shown.where}: `{text}`{parsed}: {error}")
    return found


# -- the tests -------------------------------------------------------------------------------------

SOURCES = collect()


def count(prefix: str) -> int:
    return sum(
        len(command_lines(shown))
        for name, shown_texts in SOURCES.items()
        if name.startswith(prefix)
        for shown in shown_texts
    )


@pytest.mark.parametrize("source", [name for name, shown in SOURCES.items() if shown])
def test_shown_command_lines_parse(source: str) -> None:
    bad = problems(SOURCES[source])
    assert not bad, "command lines the CLI does not accept:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("prefix", "at_least"),
    [
        ("templates/basic/public/index.html", 3),
        ("templates/todo/", 3),
        ("README.md", 60),
        ("docs/examples/github-actions.yml", 1),
        ("docs/examples/previews.yml", 5),
        ("help: ", 45),
        ("mosaicsync/cli", 3),
        ("mosaicsync/api.py", 5),
        ("mosaicsync/", 40),
    ],
)
def test_the_collector_finds_the_command_lines(prefix: str, at_least: int) -> None:
    assert count(prefix) >= at_least, f"only {count(prefix)} command lines found in {prefix}"


def test_every_command_has_its_help_checked() -> None:
    leaves = [" ".join(p) for p, c in commands() if not isinstance(c, click.Group)]
    assert len(leaves) >= 20
    assert all(f"help: {leaf}" in SOURCES for leaf in leaves)


@pytest.mark.parametrize(
    "text",
    [
        "mosaicsync migrate",
        "mosaicsync migrat up",
        "mosaicsync deploy --no-such-flag",
        "mosaicsync projects delete",
        "mosaicsync ticket --diagnostics",
        "mosaicsync migrate up --to notanumber",
        "cd site && mosaicsync link --create NAME && mosaicsync deplyo",
        'psql "$(mosaicsync db urll)"',
        "mosaicsync migrate new NAME|status|upp",
        "mosaicsync init [--templat basic|todo]",
    ],
)
def test_the_checker_rejects(text: str) -> None:
    assert problems([Shown("example", text)])


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("mosaicsync migrate new NAME|status|up", 3),
        ("mosaicsync init [DIR] [--template basic|todo] [--name N] [--create]", 3),
        ("mosaicsync storage ls|put FILE [--name N]|rm NAME", 6),
        ('psql "$(mosaicsync db url --show-password)"', 1),
        ('echo "$MOSAIC_KEY" | mosaicsync login --api-url http://x/v1/project', 1),
        ("mosaicsync migrate up [--to V] [--dry-run]   # a comment", 2),
        ("mosaicsync migrate [new NAME|status|up]", 4),
        (".venv/bin/mosaicsync local --port 0 --data ./tmp-data &", 1),
        ('eval "$(_MOSAICSYNC_COMPLETE=bash_source mosaicsync)"', 0),
        ("mosaicsync storage put {} --name media/{}", 1),
        ("mosaicsync local --pg-bin /usr/lib/postgresql/<major>/bin > out.log", 1),
        ("mosaicsync deploy --help", 1),
    ],
)
def test_the_checker_accepts(text: str, lines: int) -> None:
    shown = Shown("example", text)
    assert len(command_lines(shown)) == lines
    assert problems([shown]) == []
