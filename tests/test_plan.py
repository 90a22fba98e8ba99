"""The planner is pure: examples for each rule, then properties over generated trees."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mosaicsync import contract
from mosaicsync.manifest import (
    ManifestRow,
    local_digest,
    remember_digest,
    remembered_digest,
    rows_digest,
)
from mosaicsync.plan import (
    Plan,
    RemoteEntry,
    Target,
    Upload,
    plan_deploy,
    publish_order,
    route,
    routes,
    routes_key,
)
from mosaicsync.scan import LocalFile

CAP = 100  # a small site cap keeps generated sizes on both sides of it


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def local(path: str, content: str = "x", size: int | None = None) -> LocalFile:
    return LocalFile(
        path, Path("/src") / path, len(content) if size is None else size, sha(content)
    )


def remote(file: LocalFile, target: Target | None = None) -> RemoteEntry:
    where = target or route(file.path, file.size)
    return RemoteEntry(file.path, file.sha256, file.size, where)


def manifest(*entries: RemoteEntry) -> dict[str, RemoteEntry]:
    return {entry.path: entry for entry in entries}


# --- route ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "size", "expected"),
    [
        ("index.html", 10, "site"),
        ("INDEX.HTML", 10, "site"),
        ("img/Photo.JPG", 10, "site"),
        ("favicon.ico", 10, "site"),
        ("video.mp4", 10, "storage"),
        ("archive.tar.gz", 10, "storage"),
        ("LICENSE", 10, "storage"),
        (".well-known/security.txt", 10, "site"),
        ("page.htm", 10, "storage"),
        ("big.png", contract.MAX_SITE_FILE, "site"),
        ("big.png", contract.MAX_SITE_FILE + 1, "storage"),
    ],
)
def test_route(path: str, size: int, expected: Target) -> None:
    assert route(path, size) == expected


def test_route_honours_a_smaller_cap() -> None:
    assert route("a.css", 11, max_site_file=10) == "storage"
    assert route("a.css", 10, max_site_file=10) == "site"


def test_every_site_extension_is_routed_to_the_site() -> None:
    for extension in contract.SITE_EXTENSIONS:
        assert route(f"file{extension}", 1) == "site"
        assert route(f"file{extension.upper()}", 1) == "site"


# --- plan_deploy ---------------------------------------------------------------------------------


def test_new_changed_unchanged_and_pruned() -> None:
    same = local("same.css", "a")
    changed = local("changed.js", "new")
    new = local("new.html", "n")
    old = RemoteEntry("old.png", sha("gone"), 4, "site")
    plan = plan_deploy(
        [same, changed, new],
        manifest(remote(same), RemoteEntry("changed.js", sha("old"), 3, "site"), old),
    )
    assert [(u.file.path, u.target, u.reason) for u in plan.uploads] == [
        ("changed.js", "site", "changed"),
        ("new.html", "site", "new"),
    ]
    assert plan.unchanged == [same]
    assert plan.prune == [old]
    assert plan.bytes_to_upload == changed.size + new.size
    assert not plan.is_noop


def test_an_empty_remote_uploads_everything_and_prunes_nothing() -> None:
    files = [local("a.html"), local("b.mp4")]
    plan = plan_deploy(files, {})
    assert {u.reason for u in plan.uploads} == {"new"}
    assert plan.prune == [] and plan.unchanged == []
    assert [u.file.path for u in plan.storage_uploads] == ["b.mp4"]
    assert [u.file.path for u in plan.site_uploads] == ["a.html"]


def test_a_file_that_outgrew_the_cap_moves_and_its_old_copy_is_pruned() -> None:
    file = local("hero.png", "p" * 20)
    was_on_site = RemoteEntry("hero.png", file.sha256, file.size, "site")
    plan = plan_deploy([file], manifest(was_on_site), max_site_file=10)
    assert plan.uploads == [Upload(file, "storage", "moved-target")]
    assert plan.prune == [was_on_site]
    assert plan.unchanged == []


def test_new_content_in_another_target_is_changed_and_prunes_the_old_copy() -> None:
    file = local("hero.png", "q" * 20)
    was_on_site = RemoteEntry("hero.png", sha("older"), 5, "site")
    plan = plan_deploy([file], manifest(was_on_site), max_site_file=10)
    assert plan.uploads == [Upload(file, "storage", "changed")]
    assert plan.prune == [was_on_site]


def test_same_target_changes_never_prune_the_path() -> None:
    file = local("app.js", "v2")
    plan = plan_deploy([file], manifest(RemoteEntry("app.js", sha("v1"), 2, "site")))
    assert plan.prune == []


def test_a_manifest_row_whose_size_disagrees_is_uploaded_again() -> None:
    file = local("app.js", "v1")
    plan = plan_deploy([file], manifest(RemoteEntry("app.js", file.sha256, 999, "site")))
    assert [u.reason for u in plan.uploads] == ["changed"]


def test_paths_are_compared_exactly() -> None:
    plan = plan_deploy([local("Index.html")], manifest(remote(local("index.html"))))
    assert [u.file.path for u in plan.uploads] == ["Index.html"]
    assert [entry.path for entry in plan.prune] == ["index.html"]


def test_a_path_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        plan_deploy([local("a.html"), local("a.html", "other")], {})


def test_nothing_to_do() -> None:
    files = [local("a.html"), local("b.css")]
    plan = plan_deploy(files, manifest(*map(remote, files)))
    assert plan.is_noop and plan.unchanged == files and plan.bytes_to_upload == 0


def test_publish_order_puts_storage_then_assets_then_html() -> None:
    uploads = [
        Upload(local("index.html"), "site", "new"),
        Upload(local("z.css"), "site", "new"),
        Upload(local("docs/guide.html"), "site", "new"),
        Upload(local("video.mp4"), "storage", "new"),
        Upload(local("a.js"), "site", "changed"),
        Upload(local("huge.html", size=CAP + 1), "storage", "new"),
        Upload(local("archive.zip"), "storage", "new"),
    ]
    assert [u.file.path for u in publish_order(uploads)] == [
        "archive.zip",
        "video.mp4",
        "a.js",
        "z.css",
        "docs/guide.html",
        "huge.html",
        "index.html",
    ]


# --- properties ----------------------------------------------------------------------------------

NAMES = st.sampled_from(["index", "about", "a/b", "a/c", "img/x", "Img/x", "v", "data"])
EXTENSIONS = st.sampled_from([".html", ".css", ".js", ".png", ".mp4", ".zip", ".HTML", ""])
CONTENTS = st.sampled_from(["", "a", "b", "ab", "x" * (CAP - 1), "y" * CAP, "z" * (CAP + 1)])


@st.composite
def local_trees(draw: st.DrawFn) -> list[LocalFile]:
    paths = draw(st.sets(st.builds(str.__add__, NAMES, EXTENSIONS), max_size=12))
    return [local(path, draw(CONTENTS)) for path in sorted(paths)]


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, RemoteEntry]:
    """Remote state: some rows match a local tree by chance, others are stale or misrouted."""
    files = draw(local_trees())
    targets = st.sampled_from(["site", "storage"])
    return {f.path: RemoteEntry(f.path, f.sha256, f.size, draw(targets)) for f in files}


def apply(plan: Plan, remote_state: dict[str, RemoteEntry]) -> dict[tuple[str, str], str]:
    """What the platform holds after the deploy executes `plan`: (path, target) -> sha256."""
    state = {(entry.path, entry.target): entry.sha256 for entry in remote_state.values()}
    for upload in plan.uploads:
        state[(upload.file.path, upload.target)] = upload.file.sha256
    for entry in plan.prune:
        del state[(entry.path, entry.target)]
    return state


def after(plan: Plan, remote_state: dict[str, RemoteEntry]) -> dict[str, RemoteEntry]:
    """The manifest after the deploy, as the uploader would record it."""
    rows = dict(remote_state)
    for entry in plan.prune:
        rows.pop(entry.path, None)
    for upload in plan.uploads:
        file = upload.file
        rows[file.path] = RemoteEntry(file.path, file.sha256, file.size, upload.target)
    return rows


@settings(max_examples=300, deadline=None)
@given(files=local_trees(), remote_state=manifests())
def test_every_local_file_is_uploaded_or_unchanged_exactly_once(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry]
) -> None:
    plan = plan_deploy(files, remote_state, max_site_file=CAP)
    uploaded = [u.file.path for u in plan.uploads]
    kept = [f.path for f in plan.unchanged]
    assert sorted(uploaded + kept) == sorted(f.path for f in files)
    assert not set(uploaded) & set(kept)


@settings(max_examples=300, deadline=None)
@given(files=local_trees(), remote_state=manifests())
def test_prune_spares_local_paths_except_copies_left_in_the_old_target(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry]
) -> None:
    plan = plan_deploy(files, remote_state, max_site_file=CAP)
    targets = {u.file.path: u.target for u in plan.uploads}
    local_paths = {f.path for f in files}
    for entry in plan.prune:
        assert entry == remote_state[entry.path]
        if entry.path in local_paths:
            assert targets[entry.path] != entry.target
    assert len({entry.path for entry in plan.prune}) == len(plan.prune)


@settings(max_examples=200, deadline=None)
@given(files=local_trees(), remote_state=manifests(), prune=st.booleans())
def test_a_plan_from_the_callers_routing_is_the_plan_routed_here(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry], prune: bool
) -> None:
    targets = {f.path: route(f.path, f.size, max_site_file=CAP) for f in files}
    given_targets = plan_deploy(
        files, remote_state, prune=prune, max_site_file=CAP, targets=targets
    )
    assert given_targets == plan_deploy(files, remote_state, prune=prune, max_site_file=CAP)
    # The routing given is the one followed: nothing is routed again behind the caller's back.
    elsewhere = {path: "storage" for path in targets}
    moved = plan_deploy(files, remote_state, prune=prune, max_site_file=CAP, targets=elsewhere)
    assert {u.target for u in moved.uploads} <= {"storage"}


@settings(max_examples=300, deadline=None)
@given(files=local_trees(), remote_state=manifests())
def test_applying_the_plan_yields_the_local_tree(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry]
) -> None:
    plan = plan_deploy(files, remote_state, max_site_file=CAP)
    expected = {(f.path, route(f.path, f.size, max_site_file=CAP)): f.sha256 for f in files}
    assert apply(plan, remote_state) == expected
    # And a second deploy right after has nothing to do.
    assert plan_deploy(files, after(plan, remote_state), max_site_file=CAP).is_noop


@settings(max_examples=300, deadline=None)
@given(files=local_trees(), remote_state=manifests())
def test_reasons_match_what_the_remote_held(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry]
) -> None:
    plan = plan_deploy(files, remote_state, max_site_file=CAP)
    for upload in plan.uploads:
        entry = remote_state.get(upload.file.path)
        assert upload.target == route(upload.file.path, upload.file.size, max_site_file=CAP)
        if upload.reason == "new":
            assert entry is None
        elif upload.reason == "moved-target":
            assert entry is not None and entry.sha256 == upload.file.sha256
            assert entry.target != upload.target
        else:
            assert entry is not None
    for file in plan.unchanged:
        assert remote_state[file.path].sha256 == file.sha256


@settings(max_examples=300, deadline=None)
@given(files=local_trees(), remote_state=manifests())
def test_html_is_published_after_everything_else(
    files: list[LocalFile], remote_state: dict[str, RemoteEntry]
) -> None:
    uploads = plan_deploy(files, remote_state, max_site_file=CAP).uploads
    is_html = [u.file.path.lower().endswith(".html") for u in uploads]
    assert is_html == sorted(is_html)  # every False before every True
    rest = [u for u, html in zip(uploads, is_html, strict=True) if not html]
    is_site = [u.target == "site" for u in rest]
    assert is_site == sorted(is_site)  # storage objects before site assets
    assert publish_order(list(reversed(uploads))) == uploads  # a total, stable order


@settings(max_examples=500)
@given(st.text(alphabet="ab./.Ab_é", max_size=12))
@example("a/.htaccess")
@example("..b")
@example("dir.d/README")
@example("x.TAR.GZ")
def test_extension_is_the_one_splitext_finds(path: str) -> None:
    # One cheap function decides every type-keyed rule (route, rewrite, secret search).
    assert contract.extension(path) == posixpath.splitext(path)[1].lower()


@settings(max_examples=500)
@given(st.lists(st.text(alphabet="ab./.A_é", max_size=10), max_size=12))
@example(["x.htaccess", ".htaccess", "a/.htaccess", "b..htaccess"])
@example(["d.x/README", "e/d.x/README", "f.x/G", "n.x"])
@example(["a.TXT", "b.txt", "c.Txt"])
def test_extensions_is_extension_of_each_path_in_order(paths: list[str]) -> None:
    # Memoized by the text after the last dot: paths that share it must still be told apart
    # where the dot begins the name or belongs to a folder.
    assert list(contract.extensions(paths)) == [contract.extension(p) for p in paths]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="ab./.Pjs_", min_size=1, max_size=10),
            st.integers(min_value=0, max_value=2 * CAP),
        ),
        max_size=12,
    )
)
@example([("a.png", CAP), ("b.png", CAP + 1), (".png", 1), ("d.png/x", 1)])
def test_routes_is_route_of_every_file(named: list[tuple[str, int]]) -> None:
    files = [LocalFile(path, path, size, sha(path)) for path, size in dict(named).items()]
    expected = {f.path: route(f.path, f.size, max_site_file=CAP) for f in files}
    assert routes(files, max_site_file=CAP) == expected


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.text(alphabet="aZ/._é€😀\u00ff", min_size=1, max_size=8),
        st.sampled_from(["site", "storage"]),
        max_size=12,
    )
)
def test_the_local_digest_orders_paths_as_the_platform_does(paths: dict[str, str]) -> None:
    # DIGEST_SQL sorts by path COLLATE "C": UTF-8 bytes. The local side must agree on any name.
    entries = [(p, hashlib.sha256(p.encode()).hexdigest(), t) for p, t in paths.items()]
    by_bytes = sorted(entries, key=lambda e: e[0].encode("utf-8"))
    text = "\n".join(f"{p}\t{s}\t{t}" for p, s, t in by_bytes)
    assert local_digest(reversed(entries)) == hashlib.sha256(text.encode()).hexdigest()


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(alphabet="aZ/._é€😀\u00ff", min_size=1, max_size=8), st.booleans(), max_size=12
    )
)
def test_the_rows_digest_orders_paths_as_the_platform_does(paths: dict[str, bool]) -> None:
    # FULL_DIGEST_SQL sorts by path COLLATE "C" as well; every column counts.
    rows = [
        ManifestRow(p, hashlib.sha256(p.encode()).hexdigest(), len(p), "site", None, None, g)
        for p, g in paths.items()
    ]
    by_bytes = sorted(rows, key=lambda r: r.path.encode("utf-8"))
    text = "\n".join(
        f"{r.path}\t{r.sha256}\t{r.size}\tsite\t-\t-\t{int(r.generated)}" for r in by_bytes
    )
    assert rows_digest(reversed(rows)) == hashlib.sha256(text.encode()).hexdigest()


@settings(max_examples=200, deadline=None)
@given(files=local_trees(), other=local_trees())
def test_one_routes_key_means_one_routing_and_one_digest(
    files: list[LocalFile], other: list[LocalFile]
) -> None:
    """A deploy reuses the digest and storage paths of the last run with the same key: two
    file sets share a key only when their routes and digests are the same."""

    def answers(tree: list[LocalFile]) -> tuple[dict[str, Target], str]:
        targets = routes(tree)
        return targets, local_digest((f.path, f.sha256, targets[f.path]) for f in tree)

    files, other = sorted(files), sorted(other)  # as a scan lists them: by path
    assert routes_key(files) == routes_key(list(files))
    if routes_key(files) == routes_key(other):
        assert answers(files) == answers(other)
    else:
        assert [(f.path, f.sha256) for f in files] != [(f.path, f.sha256) for f in other]


def test_the_routes_key_follows_paths_contents_order_and_the_cap() -> None:
    a, b = local("a.html", "one"), local("b.png", "two")
    key = routes_key([a, b])
    assert routes_key([a, b]) == key
    assert routes_key([b, a]) != key
    assert routes_key([a, local("b.png", "2wo")]) != key
    assert routes_key([a, local("c.png", "two")]) != key
    assert routes_key([a]) != key
    assert routes_key([a, b], max_site_file=1) != key


def test_a_remembered_digest_is_read_back_only_for_its_key_and_whole(tmp_path: Path) -> None:
    memo = tmp_path / ".mosaicsync" / "digest"
    remember_digest(memo, "k1", "d" * 64, ["fonts/a.woff2", "clip\nwith newline.mp4"])
    assert remembered_digest(memo, "k1") == ("d" * 64, ["fonts/a.woff2", "clip\nwith newline.mp4"])
    assert remembered_digest(memo, "k2") is None
    remember_digest(memo, "k1", "d" * 64, [])
    assert remembered_digest(memo, "k1") == ("d" * 64, [])
    remember_digest(memo, "k1", "d" * 64, ["a.mp4", "b.mp4"])
    memo.write_bytes(memo.read_bytes()[:-3])  # cut short
    assert remembered_digest(memo, "k1") is None
    assert remembered_digest(tmp_path / "absent", "k1") is None
