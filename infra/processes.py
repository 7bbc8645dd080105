"""Background services on loopback: free ports, start in a new session, stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


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
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd
    )
    pid_file = root / f"{name}.pid"
    pid_file.write_text(str(proc.pid))
    return Background(proc.pid, pid_file)
