"""Path resolution against the import root, directly."""

import os

import pytest

from dicomsvc.errors import BadRequest, Forbidden, NotFound
from dicomsvc.paths import open_regular, resolve


def test_resolve_inside_and_outside(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert resolve(root, "a/x.dcm") == root / "a" / "x.dcm"
    assert resolve(root, str(root / "a" / "x.dcm")) == root / "a" / "x.dcm"
    for bad in ("../x", "a/../../x", "/etc/passwd", str(tmp_path / "rootx" / "f")):
        with pytest.raises(Forbidden):
            resolve(root, bad)


def test_resolve_follows_symlinks_before_judging(tmp_path):
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


def test_open_regular(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    with open_regular(tmp_path / "f", "f") as fh:
        assert fh.read() == b"abc"
    with pytest.raises(NotFound):
        open_regular(tmp_path / "missing", "missing")
    with pytest.raises(BadRequest, match="directory"):
        open_regular(tmp_path, ".")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadRequest, match="FIFO"):
        open_regular(tmp_path / "fifo", "fifo")


def test_unreadable_file_is_forbidden(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "f").chmod(0)
    with pytest.raises(Forbidden):
        open_regular(tmp_path / "f", "f")


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
