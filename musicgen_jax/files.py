"""Writing output files safely: check the destination before the work, write atomically after it.

`check_destination(path)` says up front (before a long generation or encode) whether an output can be
written there. `atomic_write(path, write_fn)` writes through a hidden temp file in the destination's
folder and renames it over the target, so a reader never sees a half file: the result gets the mode a
plain `open()` would give (0o666 & ~umask, or the replaced file's mode), a symlink to a regular file is
written through (its target replaced, the link kept), and directories, devices and other special files
are refused. Temp files are named `.tmp-musicgen-<pid>-<host>-*`; the ones left by a killed writer
(whose pid is no longer alive on this host) are removed by the next write into that folder.
"""
from __future__ import annotations

import os
import re
import socket
import stat
import tempfile

TMP_PREFIX = ".tmp-musicgen-"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-([A-Za-z0-9]*)-")


def check_destination(path: str) -> str:
    """The absolute path (`~` expanded) of an output file, or ValueError naming it and the problem.

    Refused: an existing directory, a device / fifo / socket, a path under a regular file, a folder (the
    nearest existing one, when missing folders are to be created) that is not writable, a read-only
    existing file. A symlink to a regular file is fine: it is written through.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    _target(path)
    return path


def atomic_write(path: str, write_fn, suffix: str = "") -> str:
    """Write via `write_fn(tmp_path)` into a hidden temp file beside the target, then rename it over the
    target: never a half file under the target's name. Returns the absolute path."""
    path = check_destination(path)
    target = _target(path)
    tmp = temp_file(os.path.dirname(target), suffix or os.path.splitext(target)[1])
    try:
        write_fn(tmp)
        publish(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return path


def temp_file(folder: str, suffix: str = "") -> str:
    """A new empty hidden file in `folder` (created if missing) to write before `publish`; named so that
    a later write into the folder removes it if this process is killed first."""
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{os.getpid()}-{_host()}-", suffix=suffix)
    os.close(fd)
    return tmp


def publish(tmp: str, target: str) -> None:
    """Rename the finished `tmp` over `target` (a regular file's path, symlinks resolved): with the mode
    a plain open() would give (0o666 & ~umask) or the replaced file's mode and owner, on disk first."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    if old is not None:
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        if os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
            os.chown(tmp, old.st_uid, old.st_gid)
    else:
        os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:  # on disk before the rename: a crash leaves the old file or the new one
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _target(path: str) -> str:
    """The file actually written for absolute `path` (a symlink's target), after checking it can be."""
    target = path
    if os.path.islink(path):
        target = os.path.realpath(path)
    if os.path.lexists(target):
        st = os.stat(target)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"cannot write {path}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"cannot write {path}: it is a device or other special file, not a regular file")
        if not os.access(target, os.W_OK):
            raise ValueError(f"cannot write {path}: the file exists and is read-only")
    folder = os.path.dirname(target)
    while not os.path.lexists(folder):  # missing folders are created, under the nearest existing one
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {folder} is not writable")
    return target


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(folder: str) -> None:
    """Remove temp files of earlier writes on this host whose process is gone (killed mid-write)."""
    host = _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TMP_NAME.match(name)
        if m is None or m.group(2) != host:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass
