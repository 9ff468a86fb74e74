"""The study's work folder: its recorded settings, and tasks that run once, claimed by one process at a time.

A task is done when its marker file exists (written atomically after its output). A process claims a task with a
``.lock`` file holding its pid (``O_EXCL``); a lock whose process is gone is taken over, so a killed run resumes
and several processes (``--jobs``, or separate invocations on one folder) share the tasks without doing one twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..runtime.atomic import write_json


def check_settings(work: Path, settings: dict) -> None:
    """Record `settings` in ``work/config.json``, or refuse a folder holding a study with other settings.

    Raises:
        ValueError: the folder's study differs (naming the first differing setting).
    """
    path = work / "config.json"
    settings = json.loads(json.dumps(settings))  # as read back (tuples are lists)
    if path.is_file():
        held = json.loads(path.read_text())
        if held != settings:
            key = next((k for k in sorted(set(held) | set(settings)) if held.get(k) != settings.get(k)), "?")
            raise ValueError(
                f"{work} holds a study with other settings ({path}: {key} is {held.get(key)!r}, this run "
                f"{settings.get(key)!r}); pass another --work folder or the same settings"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(marker: Path) -> bool:
    """Take the task of `marker` for this process; False while another live process holds it."""
    lock = marker.with_name(marker.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text() or 0)
        except (ValueError, FileNotFoundError):
            holder = 0
        if holder == os.getpid() or (holder and _alive(holder)):
            return holder == os.getpid()
        lock.unlink(missing_ok=True)  # left by a dead process: try again
        return claim(marker)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def release(marker: Path) -> None:
    marker.with_name(marker.name + ".lock").unlink(missing_ok=True)


def once(marker: Path, make: Callable[[], dict]) -> bool:
    """Run `make` unless `marker` exists, then write its returned record to `marker`.

    Returns:
        True when the task is done (now or before), False when another live process is running it.
    """
    if marker.is_file():
        return True
    if not claim(marker):
        return False
    try:
        if not marker.is_file():
            write_json(marker, make())
    finally:
        release(marker)
    return True
