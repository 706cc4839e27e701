"""Local paths stay inside base_path; files appear only complete, under their final name."""

import hashlib
import os

import pytest

from agents.transfer.local_files import AtomicFile, HashingReader, jail
from models.errors import InvalidTask, TransferIOError


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


async def test_blocks_are_gathered_then_written_out_and_hashed(tmp_path):
    """Blocks reach the temporary file a buffer at a time; the hash covers every byte in order."""
    target = AtomicFile(tmp_path / "f.bin", "/f.bin", buffer_size=10)
    await target.open()
    blocks = [bytes([n]) * 4 for n in range(7)]
    for block in blocks[:2]:
        await target.write(block)
    assert not target.temp_path.exists()  # 8 bytes: still in the buffer
    await target.write(blocks[2])
    assert target.temp_path.exists()  # the buffer was written out
    for block in blocks[3:]:
        await target.write(block)
    await target.commit()
    data = b"".join(blocks)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert target.sha256 == hashlib.sha256(data).hexdigest()
    assert os.listdir(tmp_path) == ["f.bin"]


async def test_discard_after_a_write_out_removes_the_temporary(tmp_path):
    """A transfer failing after part of the file reached disk leaves no temporary behind."""
    target = AtomicFile(tmp_path / "f.bin", "/f.bin", buffer_size=4)
    await target.open()
    await target.write(b"12345")
    assert target.temp_path.exists()
    await target.discard()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("size", [0, 10, 8])
async def test_reader_yields_the_whole_file_and_closes_it(tmp_path, size):
    """Every byte is read, hashed and counted, and the file is closed at its end."""
    data = bytes(range(size))
    (tmp_path / "f.bin").write_bytes(data)
    reader = HashingReader(tmp_path / "f.bin", "/f.bin", block_size=4)
    handle = await reader.open()
    got = [block async for block in reader.blocks(handle)]
    assert b"".join(got) == data
    assert all(got) and handle.closed
    assert reader.size == size and reader.sha256 == hashlib.sha256(data).hexdigest()


async def test_reader_of_a_directory_fails_permanently(tmp_path):
    """A directory as upload source is a permanent IO_ERROR, not a crash."""
    reader = HashingReader(tmp_path, "/", block_size=4096)
    with pytest.raises(TransferIOError) as caught:
        await reader.open()
    assert caught.value.retryable is False


async def test_small_source_is_read_whole_when_opened(tmp_path):
    """A file below the read-ahead size is read and closed by open() itself."""
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    reader = HashingReader(tmp_path / "f.bin", "/f.bin", block_size=4096)
    handle = await reader.open()
    assert handle.closed and reader.size == 100
    assert [block async for block in reader.blocks(handle)] == [b"x" * 100]
