"""Local paths stay inside base_path; files appear only complete, under their final name."""

import os

import pytest

from agents.local_files import AtomicFile, jail
from models.errors import InvalidTask


def test_paths_resolve_under_the_base(tmp_path):
    """A leading / means the root of base_path."""
    assert jail(tmp_path, "/a/b.txt") == tmp_path.resolve() / "a" / "b.txt"
    assert jail(tmp_path, "a/./c/../b.txt") == tmp_path.resolve() / "a" / "b.txt"


@pytest.mark.parametrize("path", ["../x", "/../../etc/passwd", "a/../../x", "/", "."])
def test_traversal_outside_the_base_is_rejected(tmp_path, path):
    """Normalisation cannot climb out of the base (nor name the base itself)."""
    with pytest.raises(InvalidTask, match="outside the connection's base_path"):
        jail(tmp_path / "base", path)


def test_symlink_inside_the_base_pointing_outside_is_rejected(tmp_path):
    """Symlinks are resolved before the check."""
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", base / "link")
    with pytest.raises(InvalidTask):
        jail(base, "/link/file.txt")


async def test_atomic_file_is_invisible_until_commit(tmp_path):
    """Readers never see a partial file: only the temporary exists until commit."""
    target = AtomicFile(tmp_path / "d" / "f.bin", "/d/f.bin")
    await target.open()
    await target.write(b"hello ")
    assert not (tmp_path / "d" / "f.bin").exists()
    await target.write(b"world")
    await target.commit()
    assert (tmp_path / "d" / "f.bin").read_bytes() == b"hello world"
    assert os.listdir(tmp_path / "d") == ["f.bin"]
    assert target.size == 11


async def test_discarded_file_leaves_nothing_behind(tmp_path):
    """A failed transfer removes its temporary and keeps any older final file."""
    (tmp_path / "f.bin").write_bytes(b"old")
    target = AtomicFile(tmp_path / "f.bin", "/f.bin")
    await target.open()
    await target.write(b"partial")
    await target.discard()
    assert os.listdir(tmp_path) == ["f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == b"old"
