"""`ecos_pl.atomic`: a folder is built under a temporary name that names its writer, with the umask's mode, and swapped in whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from ecos_pl.atomic import clean_dead_temporaries, owner_tag, replace_dir, write_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_replace_dir_builds_under_a_tagged_temporary_with_the_umask_mode_and_keeps_the_old_folder_until_the_swap(tmp_path, umask_027):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "old.txt").write_text("old")
    seen = {}

    def build(tmp):
        seen["tmp"] = tmp
        seen["mode"] = stat.S_IMODE(os.stat(tmp).st_mode)
        seen["old_still_there"] = (target / "old.txt").read_text()
        (tmp / "new.txt").write_text("new")

    assert replace_dir(build, target) == target
    tmp = seen["tmp"]
    assert tmp.parent == tmp_path and tmp.name.startswith(f".entry.{owner_tag()}-") and tmp.name.endswith(".tmp")
    assert seen["mode"] == 0o777 & ~0o027  # not mkdtemp's 0700
    assert seen["old_still_there"] == "old"
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # neither the temporary nor the old folder is left


def test_replace_dir_leaves_the_target_untouched_when_build_fails(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def build(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError, match="decode failed"):
        replace_dir(build, target)
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_replace_dir_makes_a_new_target_and_its_parents(tmp_path):
    target = tmp_path / "a" / "b"
    replace_dir(lambda tmp: (tmp / "x").write_text("x"), target)
    assert (target / "x").read_text() == "x"


def test_a_dead_writers_temporary_folder_is_removed_and_its_old_folder_restored(tmp_path):
    pid = _dead_pid()
    tag = f"{owner_tag().split('-')[0]}-{pid}"
    build = tmp_path / f".entry.{tag}-abcd1234.tmp"
    build.mkdir()
    (build / "half.npy").write_bytes(b"x")
    aside = tmp_path / f".entry.{tag}-abcd1234.old.tmp"  # killed between moving the old folder aside and the swap
    aside.mkdir()
    (aside / "arrays.npz").write_bytes(b"old")
    live = tmp_path / f".other.{owner_tag()}-efgh5678.tmp"  # this process: alive, left alone
    live.mkdir()
    removed = clean_dead_temporaries(tmp_path)
    assert removed == [build]
    assert (tmp_path / "entry" / "arrays.npz").read_bytes() == b"old" and not aside.exists()
    assert live.is_dir()


def test_a_dead_writers_old_folder_goes_when_the_target_was_swapped_in(tmp_path):
    tag = f"{owner_tag().split('-')[0]}-{_dead_pid()}"
    (tmp_path / "entry").mkdir()
    aside = tmp_path / f".entry.{tag}-abcd1234.old.tmp"
    aside.mkdir()
    assert clean_dead_temporaries(tmp_path) == [aside] and (tmp_path / "entry").is_dir()


def test_write_atomic_follows_the_umask(tmp_path, umask_027):
    path = write_atomic(tmp_path / "f.bin", lambda f: f.write(b"abc"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_bytes() == b"abc"
