"""Path resolution against the import root, directly."""

import os
import time

import pytest

from dicomfiles import swapping
from dicomsvc import paths
from dicomsvc.errors import BadRequest, Forbidden, NotFound
from dicomsvc.paths import open_file, resolve, walk_files


@pytest.fixture(params=["openat2", "walk"])
def lookup(request, monkeypatch):
    """Every test below runs with openat2(RESOLVE_BENEATH) and with the component walk."""
    if request.param == "openat2":
        if not paths._have_openat2:
            pytest.skip("no openat2 here")
    else:
        monkeypatch.setattr(paths, "_have_openat2", False)
    return request.param


def test_resolve_inside_and_outside(tmp_path, lookup):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert resolve(root, "a/x.dcm") == root / "a" / "x.dcm"
    assert resolve(root, str(root / "a" / "x.dcm")) == root / "a" / "x.dcm"
    for bad in ("../x", "a/../../x", "/etc/passwd", str(tmp_path / "rootx" / "f")):
        with pytest.raises(Forbidden):
            resolve(root, bad)


def test_resolve_follows_symlinks_before_judging(tmp_path, lookup):
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(Forbidden):
        resolve(root, "out/secret")
    (root / "in").symlink_to(root)
    assert resolve(root, "in/file") == root / "file"


@pytest.mark.parametrize("raw", [None, "", "  ", 3, ["a"], "a\x00"])
def test_resolve_rejects_non_paths(tmp_path, raw):
    with pytest.raises(BadRequest):
        resolve(tmp_path, raw)


def test_open_file(tmp_path, lookup):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    for raw in ("d/f", "./d//f", "d/../d/f", str(tmp_path / "d" / "f")):
        src, name = open_file(tmp_path, raw)
        with src:
            assert (src.read(), name) == (b"abc", "d/f")
    with pytest.raises(NotFound):
        open_file(tmp_path, "missing")
    with pytest.raises(BadRequest, match="directory"):
        open_file(tmp_path, "d")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadRequest, match="FIFO"):
        open_file(tmp_path, "fifo")
    with pytest.raises(BadRequest, match="[Nn]ot a directory"):
        open_file(tmp_path, "d/f/g")


def test_links_that_stay_inside_are_followed_and_others_refused(tmp_path, lookup):
    root, outside = tmp_path / "root", tmp_path / "secret"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"inside")
    outside.write_bytes(b"outside")
    (root / "rel").symlink_to("a/b/f")
    (root / "a" / "up").symlink_to("../a/b")  # a relative link through ..
    (root / "abs").symlink_to(root / "a" / "b" / "f")  # absolute, naming a place in the root
    (root / "absdir").symlink_to(root / "a")
    (root / "out").symlink_to(outside)
    (root / "outrel").symlink_to("../secret")
    (root / "a" / "esc").symlink_to("../../secret")
    (root / "loop").symlink_to("loop")
    for raw, label in (("rel", "a/b/f"), ("a/up/f", "a/b/f"), ("abs", "a/b/f"), ("absdir/b/f", "a/b/f")):
        src, name = open_file(root, raw)
        with src:
            assert (src.read(), name) == (b"inside", label), raw
    assert resolve(root, "absdir/b") == root / "a" / "b"
    for raw in ("out", "outrel", "a/esc", "../secret", "a/../../secret", str(outside)):
        with pytest.raises(Forbidden):
            open_file(root, raw)
    with pytest.raises(BadRequest, match="symbolic links"):
        open_file(root, "loop")


def test_an_absolute_path_through_a_link_to_the_root_is_inside(tmp_path, lookup):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x")
    (tmp_path / "mnt").symlink_to(tmp_path / "real")  # the root as a mount point often is
    src, name = open_file(tmp_path / "real", str(tmp_path / "mnt" / "f"))
    with src:
        assert (src.read(), name) == (b"x", "f")


def test_unreadable_file_is_forbidden(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "f").chmod(0)
    with pytest.raises(Forbidden):
        open_file(tmp_path, "f")


# Hostile names (issue 9) ------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["a" * 5000, "a/" * 3000 + "x.dcm", "d/" + "n" * 300 + ".dcm"])
def test_names_past_the_file_system_limits_are_400_not_enametoolong(tmp_path, raw):
    with pytest.raises(BadRequest, match="too long"):
        resolve(tmp_path, raw)


def test_unpaired_surrogates_are_400(tmp_path):
    from dicomsvc.paths import client_path

    for raw in ("\ud800.dcm", "caf\udce9.dcm"):  # JSON can carry both; no UTF-8 name is spelled so
        with pytest.raises(BadRequest, match="surrogate"):
            client_path(raw)
    with pytest.raises(BadRequest):
        resolve(tmp_path, "\ud800.dcm")  # not even a file name by surrogate escape
    # a name read from disk that is not UTF-8 (os.fsdecode's surrogate escape) still resolves
    assert resolve(tmp_path, os.fsdecode(b"caf\xe9.dcm")) == tmp_path / os.fsdecode(b"caf\xe9.dcm")


def test_label_is_text_json_can_carry():
    from dicomsvc.paths import label

    assert label(os.fsdecode(b"dir/caf\xe9.dcm")) == "dir/caf\ufffd.dcm"
    assert label("\ud800x") == "?x"
    assert label("plain/caf\u00e9.dcm") == "plain/caf\u00e9.dcm"
    assert len(label("a" * 5000)) == 200


# Races (issue 9) ---------------------------------------------------------------------------


def test_a_folder_swapped_for_a_link_out_never_opens_the_outside(tmp_path, lookup):
    """The file is looked up beneath the root at every component: whichever way the race
    goes, the answer is the inside file or 403, never the outside one (and never a 500)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.dcm").write_bytes(b"inside")
    outside.mkdir()
    (outside / "a.dcm").write_bytes(b"outside")
    (root / "swap").symlink_to(outside)
    seen = {"inside": 0, "forbidden": 0}
    stop, thread = swapping(root / "d", root / "swap")
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                src, name = open_file(root, "d/a.dcm")
            except Forbidden:
                seen["forbidden"] += 1
                continue
            with src:
                assert src.read() == b"inside"
            seen["inside"] += 1
    finally:
        stop.set()
        thread.join()
    assert seen["inside"] and seen["forbidden"], seen  # the race really ran both ways


def test_walk_files_lists_folders_beneath_the_root_only(tmp_path, lookup):
    root = tmp_path / "root"
    (root / "top" / "b" / "c").mkdir(parents=True)
    for name in ("top/z.dcm", "top/a.dcm", "top/b/c/x", "top/b/y"):
        (root / name).write_bytes(b"x")
    (root / "top" / "link-to-dir").symlink_to(root / "top" / "b")  # not followed: os.walk's rule
    (root / "top" / "link-to-file").symlink_to("a.dcm")  # listed: opening it decides
    assert list(walk_files(root, "top")) == [
        "top/a.dcm", "top/link-to-file", "top/z.dcm", "top/b/y", "top/b/c/x",
    ]  # fmt: skip
    assert list(walk_files(root, "top/b")) == ["top/b/y", "top/b/c/x"]
    with pytest.raises(NotFound):
        list(walk_files(root, "nope"))
    (root / "away").symlink_to(tmp_path)
    with pytest.raises(Forbidden):
        list(walk_files(root, "away"))


def test_walk_files_never_lists_a_folder_swapped_for_a_link_out(tmp_path, lookup):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "top" / "sub").mkdir(parents=True)
    (root / "top" / "sub" / "inside.dcm").write_bytes(b"x")
    outside.mkdir()
    (outside / "SECRET-NAME.dcm").write_bytes(b"x")
    (root / "swap").symlink_to(outside)
    listed = set()
    stop, thread = swapping(root / "top" / "sub", root / "swap")
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            listed.update(walk_files(root, "top"))
    finally:
        stop.set()
        thread.join()
    assert listed == {"top/sub/inside.dcm"}
