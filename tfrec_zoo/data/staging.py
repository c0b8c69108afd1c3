"""The temporary directories a dataset is written through, and the removal of those a killed run left behind.

A write goes to `.NAME.tmp-HOST-PID-XXXXXXXX/` beside `NAME/` and is renamed to `NAME/` when complete; a dataset
already at `NAME/` is moved aside to `.NAME.old-HOST-PID-XXXXXXXX/` for that moment and then removed. A run killed
with SIGKILL cannot clean up, so every write first removes the directories of earlier writes to the same `NAME/`
whose process is gone: same host, PID no longer running. Those of a live process (a concurrent write) or of
another host (a shared file system) are left alone. The leading dot and the `.tmp-` / `.old-` infix keep them apart
from datasets: nothing that looks for `NAME/manifest.json` ever finds one.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_KINDS = ("tmp", "old")


def _host() -> str:
    # a name that stays one path component and never contains the separator the PID is read back by
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_host()}-{os.getpid()}-"


def _pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name)}\.(?:{'|'.join(_KINDS)})-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a killed writer's temporary directory may then be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: running
        return True
    return True


def stale_dirs(target: str | Path) -> list[Path]:
    """Temporary directories of earlier writes to `target` whose process (on this host) has ended."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern, host = _pattern(target), _host()
    out = []
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and m["host"] == host and not pid_alive(int(m["pid"])):
            out.append(p)
    return sorted(out)


def remove_stale(target: str | Path) -> list[Path]:
    """Remove `stale_dirs(target)`; return what was removed."""
    removed = stale_dirs(target)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def staging_dir(target: str | Path) -> Path:
    """A new empty directory beside `target` to write into (stale ones of killed runs removed first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())   # mkdtemp makes it private (0700); the dataset it becomes should not be
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(new: Path, target: str | Path) -> None:
    """Rename the complete directory `new` to `target`, replacing a directory already there."""
    target = Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=_prefix(target, "old"), dir=target.parent))
    os.replace(target, old / "data")
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
