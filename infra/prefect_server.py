"""A real Prefect server and process worker on loopback, started in the background with PID
files and logs under one folder, health-checked, stopped by PID.

    python -m infra.prefect_server start DIR [PORT]
    python -m infra.prefect_server stop DIR
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.processes import Background, free_ports
from infra.processes import start_background as _start

WORKER_SIGNALS = (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL)


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


PROJECT_DIR = Path(__file__).resolve().parent.parent


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def prefect_cli(env: dict[str, str], *args: str, timeout: int = 300) -> str:
    """Run the ``prefect`` CLI in the project folder; its stdout, or an error with both streams."""
    done = subprocess.run(
        [_bin("prefect"), *args],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def start_background(cmd: list[str], env: dict[str, str], root: Path, name: str) -> Background:
    return _start(cmd, env, root, name, cwd=env.get("E4T_PROJECT_DIR"))


def start_server(
    root: Path, port: int | None = None, timeout_s: float = 120.0, auth: str | None = None
) -> tuple[Background, str]:
    """A Prefect server on 127.0.0.1; ``auth`` = ``"user:password"`` turns on its basic auth
    (``PREFECT_SERVER_API_AUTH_STRING``; clients then need ``PREFECT_API_AUTH_STRING``)."""
    port = port or free_ports(1)[0]
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(root / "home")
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    server = start_background(
        [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        root,
        "prefect-server",
    )
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"Prefect server exited; see {root / 'prefect-server.log'}")
        try:
            request = urllib.request.Request(f"{api}/health", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return server, api
        except OSError:
            time.sleep(1)
    server.stop()
    raise TimeoutError(f"Prefect server not healthy in {timeout_s} s; see {root}")


def start_worker(
    root: Path,
    api: str,
    pool: str,
    run_once: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Background:
    """A process worker; its flow runs inherit its environment (plus ``extra_env``)."""
    cmd = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    if run_once:
        cmd.append("--run-once")
    env = {**prefect_env(root / "home", api), **(extra_env or {})}
    return start_background(cmd, env, root, f"worker-{pool}")


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("start", "stop"):
        print(__doc__)
        return 2
    root = Path(argv[1]).resolve()
    if argv[0] == "start":
        _, api = start_server(root, int(argv[2]) if len(argv) > 2 else 4200)
        print(api)
        return 0
    for pid_file in root.glob("*.pid"):
        # a Prefect worker needs a second SIGTERM to exit
        Background(int(pid_file.read_text()), pid_file).stop(signals=WORKER_SIGNALS)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
