"""Background services on loopback: free ports, start in a new session, stop by PID.

Everything a service writes is its owner's only: services start with umask 077 (their data,
databases and logs are 0600 in 0700 folders, whatever the caller's umask), and
:func:`make_private` locks down a tree made before that.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PRIVATE_UMASK = 0o077  # files 0600, folders 0700


def make_private(root: Path) -> None:
    """Create ``root`` (0700) and take group and other permissions off everything under it
    (the owner's bits stay: an executable stays executable for its owner)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o700)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open (creating) a file readable by its owner only, also when it existed wider."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Background:
    """A background process in its own session, stopped by signalling its group."""

    pid: int
    pid_file: Path

    def alive(self) -> bool:
        # a zombie child still answers kill(0); read its state instead
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split()[2]
        except OSError:
            return False
        return state != "Z"

    def stop(
        self, timeout_s: float = 20.0, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)
    ) -> None:
        """Send ``signals`` to the group in turn until it is gone; remove the PID file."""
        for sig in signals:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s / len(signals)
            while time.monotonic() < deadline and self.alive():
                try:
                    os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.2)
            if not self.alive():
                break
        self.pid_file.unlink(missing_ok=True)


def start_background(
    cmd: list[str], env: dict[str, str], root: Path, name: str, cwd: str | Path | None = None
) -> Background:
    """Start ``cmd`` in a new session; log to ``root/name.log``, PID in ``root/name.pid``."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    log = os.fdopen(open_private(root / f"{name}.log"), "ab")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=cwd,
        umask=PRIVATE_UMASK,  # the service's data, databases and logs: owner-only
    )
    log.close()
    pid_file = root / f"{name}.pid"
    fd = open_private(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as out:
        out.write(str(proc.pid))
    return Background(proc.pid, pid_file)
