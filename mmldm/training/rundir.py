"""One process at a time in a run directory.

Two ``mmldm train`` runs in one directory would overwrite each other's
checkpoints, latent cache and export, and the survivor would report success
with a model assembled from both. :class:`RunLock` takes an exclusive
``fcntl.flock`` on ``<run dir>/.mmldm.lock``; the kernel releases it when the
holder exits, however it exits (``kill -9`` included), so a lock is never
stale. The file records the holder's PID, host and start time for the
message the second run prints. Where ``flock`` is not available (a network
filesystem without locking), the lock falls back to creating the file
exclusively, and a leftover file whose PID is gone on this host counts as
stale and is taken over.

Only the main process of a run locks: the processes Lightning's DDP launcher
or ``torchrun`` start for ranks other than 0 share rank 0's directory
(:func:`is_launcher_rank_zero`).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

LOCK_FILE = ".mmldm.lock"


class RunDirectoryBusy(RuntimeError):
    """Another mmldm process holds the run directory (the message names it and the holder)."""


def is_launcher_rank_zero() -> bool:
    """Whether this process is the run's first (rank 0 on node 0), judged from the launcher's variables
    (``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``SLURM_PROCID``; absent means a single process)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (f"mmldm pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')}: {holder.get('command', '?')})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of ``directory`` while the ``with`` block runs.

    Raises:
        RunDirectoryBusy: another live process holds it; the message names the directory, the
            holder (PID, host, start time, command) and what to do.
    """

    def __init__(self, directory: Path, command: str = "") -> None:
        self.path = Path(directory) / LOCK_FILE
        self.command = command
        self._fd: int | None = None
        self._exclusive_file = False

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                           "started": datetime.datetime.now().isoformat(timespec="seconds")})

    def _busy(self, holder: dict[str, Any]) -> RunDirectoryBusy:
        return RunDirectoryBusy(
            f"run directory {self.path.parent} is in use by {_describe(holder)}; two runs in one directory "
            "would overwrite each other's checkpoints and export. Wait for it to finish, stop it, or give this "
            "run another hydra.run.dir"
        )

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(_holder(self.path)) from None
        except OSError:  # no flock on this filesystem (ENOLCK): an exclusively created file instead
            os.close(fd)
            return self._acquire_exclusive_file()
        os.ftruncate(fd, 0)
        os.write(fd, self._record().encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_exclusive_file(self) -> "RunLock":
        holder = _holder(self.path)
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            self.path.unlink(missing_ok=True)  # stale: its process is gone
        elif holder:
            raise self._busy(holder)
        else:
            self.path.unlink(missing_ok=True)  # the empty file the flock attempt created
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise self._busy(_holder(self.path)) from None
        os.write(fd, self._record().encode())
        os.close(fd)
        self._exclusive_file = True
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._exclusive_file:
            self.path.unlink(missing_ok=True)
            self._exclusive_file = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
