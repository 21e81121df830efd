"""Atomic writes (dermsearch.io): the content after a write, nothing left behind and the old file
untouched when a write fails part way, fsync of the file and of its directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from dermsearch import io


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writes_have_their_content_and_leave_only_the_target(tmp_path):
    io.write_bytes(tmp_path / "a.bin", b"\x00\x01 bytes")
    io.write_text(tmp_path / "b.txt", "tekst ünïcode")
    io.write_json(tmp_path / "c.json", {"z": 1, "a": [1.5, None]}, indent=2, sort_keys=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01 bytes"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "tekst ünïcode"
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": [1.5, None], "z": 1}, indent=2)
    # over an existing file: replaced whole
    io.write_text(tmp_path / "b.txt", "short")
    assert (tmp_path / "b.txt").read_text() == "short"
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json"]


def test_mode_is_the_files_from_the_start(tmp_path):
    io.write_json(tmp_path / "tokens.json", {"tokens": []}, mode=0o600)
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


class _Boom(Exception):
    pass


@pytest.mark.parametrize("how", ["writer", "fsync", "rename"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, how):
    target = tmp_path / "state.json"
    io.write_json(target, {"epoch": 1})
    before = target.read_bytes()
    if how == "writer":                       # the writer dies half way through its file
        with pytest.raises(_Boom), io.atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b'{"epoch": 2, "hal')
            raise _Boom
    else:                                     # the disk refuses the flush, or the rename
        name = "fsync" if how == "fsync" else "replace"

        def fail(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(io.os, name, fail)
        with pytest.raises(OSError, match="No space"):
            io.write_json(target, {"epoch": 2})
        monkeypatch.undo()
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["state.json"]
    # and the next write works
    io.write_json(target, {"epoch": 3})
    assert json.loads(target.read_text()) == {"epoch": 3}


def test_a_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    def fail(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(io.os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        io.write_bytes(tmp_path / "new.bin", b"x" * 1000)
    assert _names(tmp_path) == []


def test_the_file_and_its_directory_are_flushed(tmp_path, monkeypatch):
    flushed = []
    real = os.fsync

    def spy(fd):
        flushed.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(io.os, "fsync", spy)
    io.write_text(tmp_path / "f.txt", "x")
    assert len(flushed) == 2
    assert os.path.dirname(flushed[0]) == str(tmp_path.resolve()) and flushed[0] != str(tmp_path / "f.txt")  # the temp
    assert flushed[1] == str(tmp_path.resolve())                                                             # the dir


def test_replace_file_moves_a_finished_file_into_place(tmp_path):
    (tmp_path / "cache.npy.partial").write_bytes(b"done")
    (tmp_path / "cache.npy").write_bytes(b"old")
    io.replace_file(tmp_path / "cache.npy.partial", tmp_path / "cache.npy")
    assert (tmp_path / "cache.npy").read_bytes() == b"done" and _names(tmp_path) == ["cache.npy"]


def test_replace_dir_swaps_a_whole_directory(tmp_path, monkeypatch):
    target = tmp_path / "fast-v3"
    target.mkdir()
    (target / "old.npy").write_bytes(b"old")
    tmp = io.temp_dir_for(target)
    assert tmp.parent == tmp_path and tmp.name.startswith("fast-v3.tmp") and _names(tmp) == []
    (tmp / "sub").mkdir()
    (tmp / "sub" / "a.npy").write_bytes(b"a")
    (tmp / "fast.json").write_text("{}")
    flushed = []
    real = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (flushed.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                    real(fd)))
    assert io.replace_dir(tmp, target) == target
    assert _names(tmp_path) == ["fast-v3"] and _names(target) == ["fast.json", "sub"]
    assert (target / "sub" / "a.npy").read_bytes() == b"a" and not (target / "old.npy").exists()
    # every file and directory of the new tree was flushed before the rename, then the parent after it
    assert {os.path.basename(p) for p in flushed[:-1]} >= {"a.npy", "fast.json", "sub", tmp.name}
    assert flushed[-1] == str(tmp_path.resolve())
    # a leftover of a crashed build with this process id is cleared, not reused
    again = io.temp_dir_for(target)
    (again / "junk").write_text("x")
    assert _names(io.temp_dir_for(target)) == []


def test_a_failed_directory_flush_keeps_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "onnx"
    target.mkdir()
    (target / "onnx.json").write_text("old")
    tmp = io.temp_dir_for(target)
    (tmp / "onnx.json").write_text("new")

    def fail(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(io.os, "fsync", fail)
    with pytest.raises(OSError):
        io.replace_dir(tmp, target)
    assert (target / "onnx.json").read_text() == "old"


def _old_and_new(tmp_path):
    target = tmp_path / "fast-v1"
    target.mkdir(parents=True)
    (target / "fast.json").write_text("old")
    tmp = io.temp_dir_for(target)
    (tmp / "fast.json").write_text("new")
    return target, tmp


def test_replace_dir_is_never_missing_when_the_system_can_exchange(tmp_path, monkeypatch):
    import platform

    if platform.system() != "Linux":
        pytest.skip("renameat2 is Linux's")
    target, tmp = _old_and_new(tmp_path)
    renames = []
    monkeypatch.setattr(io.os, "replace", lambda a, b: renames.append((a, b)))   # the fallback must not run

    def crash(path, ignore_errors=False):
        raise KeyboardInterrupt("killed after the swap, before the old directory was removed")

    monkeypatch.setattr(io.shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        io.replace_dir(tmp, target)
    assert renames == []
    assert (target / "fast.json").read_text() == "new"     # the new directory is in place ...
    assert (tmp / "fast.json").read_text() == "old"        # ... the old one under the temporary name
    monkeypatch.undo()
    assert io.temp_dir_for(target) == tmp and list(tmp.iterdir()) == []   # which the next build clears


def test_replace_dir_without_exchange_keeps_the_old_files_aside(tmp_path, monkeypatch):
    target, tmp = _old_and_new(tmp_path)
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    io.replace_dir(tmp, target)
    assert (target / "fast.json").read_text() == "new" and _names(tmp_path) == ["fast-v1"]
    # a crash between the fallback's two renames: no target, the old files intact aside
    target, tmp = _old_and_new(tmp_path / "again")
    real, calls = os.replace, []

    def second_fails(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real(a, b)

    monkeypatch.setattr(io.os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt):
        io.replace_dir(tmp, target)
    aside = [p for p in (tmp_path / "again").iterdir() if p.name.startswith(".fast-v1.old-")]
    assert not target.exists() and len(aside) == 1 and (aside[0] / "fast.json").read_text() == "old"


def test_replace_dir_removes_the_asides_of_dead_processes_only(tmp_path, monkeypatch):
    target, tmp = _old_and_new(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)                     # a process that has exited
    live_pid = os.getppid()                         # one that runs (this test's parent)
    for pid in (dead_pid, live_pid):
        (tmp_path / f".fast-v1.old-{pid}-abcd1234").mkdir()
        (tmp_path / f".fast-v1.old-{pid}-abcd1234" / "fast.json").write_text("older")
    (tmp_path / ".fast-v1.old-notapid").mkdir()
    (tmp_path / ".other.old-1-x").mkdir()           # another target's: not ours to touch
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    io.replace_dir(tmp, target)
    assert (target / "fast.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        [f".fast-v1.old-{live_pid}-abcd1234", ".fast-v1.old-notapid", ".other.old-1-x"])
