"""Files written so that a reader never sees half of one: a temporary name in the target folder, then a rename.

One place for it: results, caches, sidecars, figures' CSVs and the programs' message
files all go through `write_atomic`; a folder (a decode-cache entry, a program's output
folder) is built under a temporary name and swapped in by `replace_dir`. Whatever is
written follows the umask (never the 0600/0700 of `mkstemp`/`mkdtemp`). A temporary's
name carries its writer's host and pid (`temporary_path`), so what a killed process
leaves behind is recognised and removed by the next writer in that folder
(`clean_dead_temporaries`); a cache entry that fails its checks is moved aside
(`move_aside`), never used and never deleted unseen.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Callable


class CacheWarning(UserWarning):
    """A cache entry was found damaged and moved aside; the run rebuilds it."""


def host_tag() -> str:
    """8 hex digits naming this host: a pid means something only on the host that made it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """`<host>-<pid>` of the calling process, as it goes into temporary names."""
    return f"{host_tag()}-{os.getpid()}"


#: a temporary named by `temporary_path` or `FeatureWriter`: `...<host>-<pid>[.-]....tmp` (the rightmost such tag)
_TEMPORARY = re.compile(r"^.*\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)[.-][^/]*\.tmp$")
#: the old folder `replace_dir` moves aside for the swap: `.<name>.<host>-<pid>-<random>.old.tmp`
_ASIDE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}-\d+-[^/]*\.old\.tmp$")


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A unique temporary name beside `path`, created empty: `.<name>.<host>-<pid>-<random><suffix>.tmp`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner_tag()}-", suffix=f"{suffix}.tmp")
    os.close(fd)
    return Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in `folder` whose writer (this host, that pid) is no longer running; return them.

    Temporaries of live processes (a concurrent run) and of other hosts (a shared file
    system) are left alone: their pid cannot be checked here. A dead writer's temporary
    folder (`replace_dir`) goes too, but an old folder it had moved aside for its swap is
    renamed back when nothing has taken its place.
    """
    removed: list[Path] = []
    me = host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != me or _alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                aside = _ASIDE.match(entry.name)
                if aside is not None and not os.path.lexists(os.path.join(folder, aside["name"])):
                    os.rename(entry.path, os.path.join(folder, aside["name"]))  # killed between the two renames of a swap
                    continue
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
            removed.append(Path(entry.path))
        except OSError:  # another cleaner was first
            pass
    return removed


def move_aside(path: str | os.PathLike, reason: str, *, expected: os.stat_result | None = None) -> Path | None:
    """Rename a damaged cache entry to `<name>.damaged-<time>-<pid>` and warn naming it; None when it is already gone.

    `expected`: the stat of the file that was checked; a file replaced since (a concurrent
    run rebuilt it) is left in place.
    """
    path = Path(path)
    try:
        if expected is not None and os.stat(path).st_ino != expected.st_ino:
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")  # microseconds: two entries moved in one second stay two
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    warnings.warn(f"cache entry {path} is damaged ({reason}); moved aside to {aside.name} and rebuilt.", CacheWarning, stacklevel=2)
    return aside


def _named(err: OSError, path: Path) -> OSError:
    """`err` with `path` as its file when it names none (a full disk's write: "No space left on device")."""
    if err.filename is None:
        return OSError(err.errno, err.strerror or str(err), str(path))
    return err


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Within: an OSError that names no file (a full disk) names `path` (the file as the user will know it)."""
    try:
        yield
    except OSError as err:
        raise _named(err, Path(path)) from err


def write_atomic(path: str | os.PathLike, write: Callable[[object], None], *, binary: bool = True) -> Path:
    """Write through `write(file)` to a temporary name beside `path`, then rename it into place (an OSError names `path`)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temporaries(path.parent)
    tmp = temporary_path(path)
    try:
        try:
            with open(tmp, "wb" if binary else "w") as f:
                write(f)
        except OSError as err:
            raise _named(err, path) from err
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results and messages are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def replace_dir(build: Callable[[Path], None], target: str | os.PathLike) -> Path:
    """Build a folder through `build(folder)` under a temporary name beside `target`, then swap it in.

    The temporary is `.<name>.<host>-<pid>-<random>.tmp` (mode from the umask); an existing
    `target` stays in place, whole, until the swap: it is renamed aside, the new folder renamed
    in, and only then removed. If `build` raises, `target` is untouched and the temporary goes.
    """
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temporaries(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{owner_tag()}-", suffix=".tmp"))
    old = tmp.with_name(f"{tmp.name[: -len('.tmp')]}.old.tmp")
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; caches and outputs are meant to be shared
        try:
            build(tmp)
        except OSError as err:  # a full disk: name the folder being written, not the temporary
            raise _named(err, target) from err
        if os.path.lexists(target):
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    return target


def replace_entries(build: Callable[[Path], None], folder: str | os.PathLike) -> list[Path]:
    """Several files (and folders) written into `folder` as one: all or none.

    `build(tmp)` writes every entry into a temporary folder inside `folder`; only when it has
    returned is each entry renamed into place (a folder swapped as `replace_dir` swaps it). A
    build that fails (a full disk) leaves `folder` as it was, and the error names `folder`;
    renames need no space. Entries of `folder` that `build` does not write are left alone.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    clean_dead_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".entries.{owner_tag()}-", suffix=".tmp"))
    placed: list[Path] = []
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            build(tmp)
        except OSError as err:
            raise _named(err, folder) from err
        for entry in sorted(tmp.iterdir()):
            target = folder / entry.name
            if entry.is_dir() and not entry.is_symlink():
                old = Path(tempfile.mkdtemp(dir=folder, prefix=f".{target.name}.{owner_tag()}-", suffix=".old.tmp"))
                os.rmdir(old)
                if os.path.lexists(target):
                    os.replace(target, old)
                os.replace(entry, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, target)
            placed.append(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return placed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))  # bytes: no newline translation


def write_json_atomic(obj, path: str | os.PathLike, *, indent: int = 2, sort_keys: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
