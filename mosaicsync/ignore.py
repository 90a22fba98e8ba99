"""What is never published: the default ignore layer, .mosaicignore files and mosaic.toml's
`[static] ignore`, in gitignore syntax.

One list decides for every command: `deploy`, `status`, `watch` and `dev` all build their rules
here, so a name skipped by one is skipped by all (editor temp files included).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mosaicsync.errors import ConfigError

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

# Never published, whatever a `!pattern` says, unless the caller passes allow_secrets=True: the
# files where common tools keep credentials. Matched on the lowercased path, so every pattern here
# is lowercase. Names that may be real site files (`config.json`, `*.json`, `settings.py`, `*.asc`
# public keys, `.well-known/`) are left out: a pattern names a tool's own file or folder.
# Built from these lists of such names:
#   https://github.com/github/gitignore (Terraform.gitignore, Global/JetBrains.gitignore)
#   https://github.com/eth0izzle/shhgit/blob/master/config.yaml (file signatures, from gitrob's)
#   https://github.com/michenriksen/gitrob (signatures of sensitive files)
#   https://github.com/Skyscanner/whispers/blob/master/whispers/rules/sensitive-files.yml
SECRET_IGNORES: tuple[str, ...] = (
    # Version control: metadata, stored credentials, configs that may hold tokens.
    ".git/",
    ".hg/",
    ".svn/",
    ".bzr/",
    ".git-credentials",
    ".gitconfig",
    ".hgrc",
    # Environment files.
    ".env",
    ".env.*",
    ".env*",
    # SSH, GPG, TLS and other private keys, keystores and password databases.
    ".ssh/",
    ".gnupg/",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.pkcs12",
    "*.ppk",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.ovpn",
    "id_rsa*",
    "id_dsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "otr.private_key",
    # Cloud and platform CLIs.
    ".aws/",
    ".azure/",
    ".kube/",
    "kubeconfig",
    "**/.docker/config.json",
    ".dockercfg",
    "**/.config/gcloud/",
    "application_default_credentials.json",
    "client_secret*.json",
    "**/.config/gh/hosts.yml",
    "**/.config/hub",
    "**/doctl/config.yaml",
    ".s3cfg",
    ".boto",
    ".tugboat",
    ".vault-token",
    ".databrickscfg",
    "**/.oci/",
    # mosaicsync's own stored API keys.
    "credentials.toml",
    # Package managers and registries.
    ".npmrc",
    ".yarnrc.yml",
    ".pypirc",
    "pip.conf",
    "**/.gem/credentials",
    "**/.bundle/config",
    "**/.cargo/credentials",
    "**/.cargo/credentials.toml",
    "**/.composer/auth.json",
    "**/.m2/settings.xml",
    "settings-security.xml",
    "**/.gradle/gradle.properties",
    "credentials.xml",
    # Network logins and database clients.
    ".netrc",
    "_netrc",
    ".pgpass",
    ".my.cnf",
    ".mylogin.cnf",
    ".htpasswd",
    "proftpdpasswd",
    # Shells and REPLs: history and startup files.
    ".*_history",
    ".history",
    ".zhistory",
    ".bashrc",
    ".zshrc",
    ".bash_profile",
    ".zprofile",
    ".bash_aliases",
    # Infrastructure state and variables.
    "*.tfstate",
    "*.tfstate.*",
    "*.tfvars",
    "*.tfvars.json",
    ".terraform/",
    ".terraformrc",
    "terraform.rc",
    ".vagrant/",
    ".chef/",
    "knife.rb",
    ".vault_pass",
    # Editors' remote-sync and settings-sync files, which store server passwords and tokens.
    "sftp-config.json",
    "**/.vscode/sftp.json",
    ".ftpconfig",
    ".remote-sync.json",
    "synclocalsettings.json",
    "**/.idea/webservers.xml",
    "**/.idea/datasources.local.xml",
    "**/.idea/sshconfigs.xml",
    "filezilla.xml",
    "recentservers.xml",
    "sitemanager.xml",
)

# Files editors write next to a file while saving it: vim's write probe `4913`, swap and backup
# files, Emacs locks and autosaves, JetBrains' safe write, GNOME's and Kate's temp files, Chrome's
# File System Access swap and Office's lock files. Never published, and a save that touches them
# is never synced; a `!pattern` can re-include one (`!*.tmp`) for every command at once.
EDITOR_TEMP_IGNORES: tuple[str, ...] = (
    "4913",
    "*.sw[a-px]",
    "*~",
    ".#*",
    r"\#*#",  # the backslash keeps it from reading as a comment
    "*___jb_tmp___",
    "*___jb_old___",
    "*___jb_bak___",
    "*.tmp",
    ".goutputstream-*",
    "*.crswap",
    "*.kate-swp",
    "~$*",
)

# The whole default layer, in gitignore syntax, relative to the static root. `.well-known/` is
# deliberately absent: sites need it (ACME challenges, security.txt).
DEFAULT_IGNORES: tuple[str, ...] = (
    *SECRET_IGNORES,
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "node_modules/",
    "__pycache__/",
    ".venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".hypothesis/",
    ".idea/",
    ".vscode/",
    # mosaicsync's own files, for a project whose static root is the project dir itself.
    ".mosaicsync/",
    "mosaic.toml",
    ".mosaicignore",
    *EDITOR_TEMP_IGNORES,
)

IGNORE_FILE = ".mosaicignore"
DEFAULT_SOURCE = "default"  # the default layer's label; its patterns are known to be valid
CONFIG_SOURCE = "mosaic.toml [static] ignore"


# --- ignore rules --------------------------------------------------------------------------------


class _Rule(NamedTuple):
    pattern: str
    source: str

    @property
    def reason(self) -> str:
        return f"{self.source}: {self.pattern}"


class _Pattern(NamedTuple):
    """One gitignore line, as the regex source pathspec makes of it (compiled only when needed)."""

    line: str
    regex: str
    include: bool  # False for a `!pattern`
    rule: _Rule


class _Layer:
    """One gitignore spec plus union regexes that rule most paths out in a single C-level match.

    Only the regexes a walk needs are compiled up front: the spec (a regex per pattern) and the
    union for a path whose parents were not checked are built on first use, which is rare; a
    command starts some 25 ms sooner.
    """

    def __init__(self, patterns: list[_Pattern]) -> None:
        self.patterns = patterns
        self.rules = [pattern.rule for pattern in patterns]
        self.split = _split_regexes(patterns)

    @functools.cached_property
    def spec(self) -> GitIgnoreSpec:
        from pathspec import GitIgnoreSpec

        return GitIgnoreSpec.from_lines([pattern.line for pattern in self.patterns])

    @functools.cached_property
    def prefilter(self) -> re.Pattern[str] | None:
        return _union_regex(self.patterns)

    def check(self, path: str, walked: bool = False) -> tuple[bool | None, _Rule | None]:
        """(True, rule) if ignored, (False, rule) if a `!pattern` re-includes it, else no rule.

        `walked`: every parent of `path` was checked and kept, so a pattern that cannot cross a
        "/" can only match the last part of it (see `_split_regexes`).
        """
        if walked and self.split is not None:
            tail, rest = self.split
            if tail.match(path, path.rfind("/", 0, len(path) - 1) + 1) is None and (
                rest is None or rest.match(path) is None
            ):
                return None, None
        elif self.prefilter is not None and self.prefilter.match(path) is None:
            return None, None
        result = self.spec.check_file(path)
        if result.index is None:
            return None, None
        return result.include, self.rules[result.index]


_ANY_DIR = "^(?:.+/)?"
# What a pattern may end with and still match within one part of a path: the part's end, or the
# "/" that ends a directory's key.
_ONE_PART_ENDS = ("(?:(?:/)|$)", "(?:/)")


def _sources(patterns: Sequence[_Pattern]) -> tuple[list[str], list[str]]:
    """The excluding patterns' regex sources, split into those that may match at any depth (their
    "any directory" prefix cut off) and the rest."""
    grouped: list[str] = []
    alone: list[str] = []
    for pattern in patterns:
        if not pattern.include:
            continue
        # Group names repeat across patterns; only the union of matches matters here.
        source = re.sub(r"\(\?P<\w+>", "(?:", pattern.regex)
        if source.startswith(_ANY_DIR):
            grouped.append(source[len(_ANY_DIR) :])
        else:
            alone.append(source)
    return grouped, alone


def _compile_union(grouped: Sequence[str], alone: Sequence[str]) -> re.Pattern[str] | None:
    branches = [f"{_ANY_DIR}(?:{'|'.join(grouped)})"] if grouped else []
    branches += [f"(?:{source})" for source in alone]
    if not branches:
        return re.compile(r"(?!)")
    try:
        return re.compile("|".join(branches))
    except re.error:
        return None


def _union_regex(patterns: Sequence[_Pattern]) -> re.Pattern[str] | None:
    """A regex matching whenever any excluding pattern matches, or None if one cannot be built.

    The spec walks its patterns one by one in Python; most paths match none, and this says so in
    one match. Patterns sharing the "any directory" prefix are grouped so it is scanned once.
    """
    return _compile_union(*_sources(patterns))


def _one_part(source: str) -> bool:
    """Whether a pattern (its "any directory" prefix cut off) matches within one part of a path:
    no "/" but the one that ends a directory, nothing that could match a "/" (`.`, a class
    other than `[^/]`)."""
    body = next((source[: -len(end)] for end in _ONE_PART_ENDS if source.endswith(end)), None)
    if body is None:
        return False
    body = re.sub(r"\\[^/]|\[\^/\]", "", body)  # escaped characters, "any but /"
    return not any(c in body for c in "/.[")


def _split_regexes(
    patterns: Sequence[_Pattern],
) -> tuple[re.Pattern[str], re.Pattern[str] | None] | None:
    """For a walk, which checks a folder before what is in it: (a regex of the patterns that match
    within one part, tried on the last part only; a regex of the others, tried on the whole path),
    or None where that would not be the same answer as `_union_regex`.

    A one-part pattern matches a path at any depth; when it matches a parent, that parent was
    ignored and the walk never went in, unless a `!pattern` let it: so with no `!pattern`, only the
    last part can match. It is one anchored match on a short string instead of a match retried at
    every "/" of the path.
    """
    if any(not pattern.include for pattern in patterns):
        return None
    grouped, alone = _sources(patterns)
    tail: list[str] = []
    deep: list[str] = []
    for source in grouped:
        (tail if _one_part(source) else deep).append(source)
    try:
        tail_regex = re.compile("|".join(f"(?:{source})" for source in tail) or r"(?!)")
    except re.error:
        return None
    rest = _compile_union(deep, alone) if deep or alone else None
    if (deep or alone) and rest is None:
        return None
    return tail_regex, rest


def _compile(lines: Iterable[str], source: str) -> list[_Pattern]:
    """The patterns of one layer; an invalid line is a ConfigError naming where it is.

    The defaults are known to be valid and are not compiled here (see `_Layer`)."""
    from pathspec.gitignore import GitIgnoreSpecPattern

    compiled: list[_Pattern] = []
    for number, raw in enumerate(lines, start=1):
        line = unicodedata.normalize("NFC", raw.rstrip("\r\n"))
        if not line.strip():
            continue
        try:
            regex, include = GitIgnoreSpecPattern.pattern_to_regex(line)
            if regex is not None and source != DEFAULT_SOURCE:
                re.compile(regex)
        except (ValueError, re.error) as exc:
            where = source if source == CONFIG_SOURCE else f"{source} line {number}"
            raise ConfigError(
                f"{where}: invalid ignore pattern {line!r} ({getattr(exc, 'msg', exc)})",
                hint="fix the pattern; the syntax is the one of .gitignore",
            ) from exc
        if include is not None and regex is not None:  # comments make no pattern
            compiled.append(_Pattern(line, regex, include, _Rule(line.strip(), source)))
    return compiled


class IgnoreRules:
    """The ignore layers of one project, built once and reused by every walk (and a watcher).

    `layers` are (gitignore lines, source label) pairs, lowest precedence first. The user's
    layers are checked at once (a bad pattern is an error before any walk); the regexes are
    built at the first path asked about, which a walk that meets only files it vetted before
    never asks (see `fingerprint`).
    """

    def __init__(
        self,
        layers: Sequence[tuple[Iterable[str], str]],
        *,
        allow_secrets: bool = False,
    ) -> None:
        self._layers = [(list(lines), source) for lines, source in layers]
        self._checked = {
            i: _compile(lines, source)
            for i, (lines, source) in enumerate(self._layers)
            if source != DEFAULT_SOURCE and lines
        }
        self.allow_secrets = allow_secrets

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of everything these rules decide by: two rules with the same fingerprint
        ignore the same paths, so a path one of them kept needs no second look by the other."""
        digest = hashlib.sha256(b"ignore-rules 1\0")
        for lines, source in self._layers:
            digest.update(f"{source}\0{len(lines)}\0".encode())
            digest.update("\0".join(lines).encode("utf-8", "surrogatepass") + b"\1")
        if not self.allow_secrets:
            digest.update(b"secrets\0" + "\0".join(SECRET_IGNORES).encode())
        return digest.hexdigest()

    @functools.cached_property
    def _all(self) -> _Layer:
        compiled: list[_Pattern] = []
        for i, (lines, source) in enumerate(self._layers):
            compiled += self._checked[i] if i in self._checked else _compile(lines, source)
        return _Layer(compiled)

    @functools.cached_property
    def _secrets(self) -> _Layer | None:
        # Checked apart from the other layers so that no `!pattern` can re-include a secret; on
        # the lowercased path, so `.ENV` or `Server.PEM` on a case-insensitive disk are caught too.
        if self.allow_secrets:
            return None
        return _Layer(_compile(SECRET_IGNORES, DEFAULT_SOURCE))

    def match(self, rel_path: str, is_dir: bool, walked: bool = False) -> str | None:
        """Why `rel_path` is ignored, or None; parents are not checked, as a walk prunes them.

        `walked`: the caller checked every parent of `rel_path` and kept it (a walk does), which
        makes the check faster and changes no answer.
        """
        key = rel_path + "/" if is_dir else rel_path
        if self._secrets is not None:
            secret = self.secret_reason(rel_path, is_dir, walked)
            if secret is not None:
                return secret
        include, rule = self._all.check(key, walked)
        return rule.reason if include and rule is not None else None

    def secret_reason(self, rel_path: str, is_dir: bool, walked: bool = False) -> str | None:
        """The secret rule `rel_path` matches, or None; None always when secrets are allowed."""
        if self._secrets is None:
            return None
        key = (rel_path + "/" if is_dir else rel_path).lower()
        include, rule = self._secrets.check(key, walked)
        if not include or rule is None:
            return None
        include_all, _ = self._all.check(rel_path + "/" if is_dir else rel_path)
        if include_all is False:
            return f"{rule.reason} (a secret: a !pattern cannot re-include it)"
        return rule.reason

    def match_with_parents(
        self, rel_path: str, is_dir: bool, *, secrets_only: bool = False
    ) -> str | None:
        """Like `match`, but a path inside an ignored directory is ignored too (for a watcher)."""
        check = self.secret_reason if secrets_only else self.match
        parts = rel_path.split("/")
        for depth in range(1, len(parts)):
            reason = check("/".join(parts[:depth]), True, True)
            if reason is not None:
                return reason
        return check(rel_path, is_dir, True)


def load_ignore_rules(
    static_root: Path,
    project_dir: Path,
    extra: Sequence[str] = (),
    *,
    allow_secrets: bool = False,
) -> IgnoreRules:
    """Defaults, then .mosaicignore in the static root and in the project dir, then `extra`.

    Every layer is gitignore syntax relative to the static root; later layers win.
    """
    layers: list[tuple[Iterable[str], str]] = [(DEFAULT_IGNORES, DEFAULT_SOURCE)]
    candidates = [static_root / IGNORE_FILE]
    if not _same_dir(static_root, project_dir):
        candidates.append(project_dir / IGNORE_FILE)
    for path in candidates:
        lines = _read_ignore_file(path, project_dir)
        if lines is not None:
            layers.append((lines, _label(path, project_dir)))
    layers.append((extra, CONFIG_SOURCE))
    return IgnoreRules(layers, allow_secrets=allow_secrets)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _label(path: Path, project_dir: Path) -> str:
    try:
        return Path(os.path.relpath(path, project_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def _read_ignore_file(path: Path, project_dir: Path) -> list[str] | None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {_label(path, project_dir)}: {exc}",
            hint="make it a readable UTF-8 text file, or remove it",
        ) from exc
    return text.splitlines()


@functools.cache
def _editor_temp() -> GitIgnoreSpec:
    from pathspec import GitIgnoreSpec

    return GitIgnoreSpec.from_lines(EDITOR_TEMP_IGNORES)


def is_editor_temp(name: str) -> bool:
    """True for a file name an editor writes while saving (one of `EDITOR_TEMP_IGNORES`)."""
    return _editor_temp().match_file(name)
