"""Trigger ``personalize-bulk`` when a new batch of images lands in a folder.

A batch is a sub-folder of the watched folder holding a ``READY`` file (written last by
whoever uploads the batch, so a half-copied folder is never picked up). Each ready batch
starts one run of the deployment, with ``images_url`` = the batch and ``output_url`` =
``OUT_ROOT/<batch name>``.

Exactly once per batch, whatever happens:

- every trigger carries an idempotency key made of the folder and the batch: a watcher
  killed between starting a run and writing its state file starts it again on restart,
  and the Prefect server hands back the run it already made instead of a second one;
- triggered batches are remembered in ``.e4t-watch.json`` (so a restart does not even ask);
- one watcher per folder scans at a time: it holds ``.e4t-watch.lease`` (created
  exclusively, renewed every scan, taken over when it expires), so a second watcher on the
  same folder waits as a standby;
- listings are fresh on every scan (s3fs would otherwise cache a prefix's listing for the
  life of the process and never see a new batch);
- an error (the Prefect API or the store unreachable) is logged and the scan retried
  after an exponential back-off (``--interval`` doubling up to ``--max-backoff``).

    python -m flows.watch data/inbox --out-root data/concepts \\
        --model-uri models:/e4t-faces@champion [--interval 30] [--once]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from e4t import io as eio

logger = logging.getLogger(__name__)

READY = "READY"
STATE = ".e4t-watch.json"
LEASE = ".e4t-watch.lease"
DEPLOYMENT = "personalize-bulk/personalize-bulk"

# parameters, idempotency key → flow run id
Trigger = Callable[[dict[str, Any], str], str]


def ready_batches(folder: str) -> list[str]:
    """Sub-folders of ``folder`` holding a READY marker, sorted; listed afresh."""
    fs, path = eio.get_fs(folder)
    fs.invalidate_cache(path)  # a fresh listing: an s3fs cache would hide new batches
    batches = []
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        if entry["type"] != "directory":
            continue
        batch = entry["name"].rstrip("/")
        fs.invalidate_cache(batch)
        if fs.exists(f"{batch}/{READY}"):
            batches.append(batch.rsplit("/", 1)[-1])
    return batches


def batch_key(folder: str, name: str) -> str:
    """The idempotency key of a batch's flow run: the same folder and batch, the same key."""
    digest = hashlib.sha256(f"{folder.rstrip('/')}/{name}".encode()).hexdigest()[:32]
    return f"e4t-watch-{digest}"


def deployment_trigger(deployment: str = DEPLOYMENT) -> Trigger:
    """Start a run of ``deployment`` on the configured Prefect API; returns its id (the
    existing run's, when one was made with the same key)."""
    from prefect.deployments import run_deployment

    def trigger(parameters: dict[str, Any], key: str) -> str:
        run = run_deployment(
            deployment, parameters=parameters, timeout=0, idempotency_key=key, as_subflow=False
        )
        return str(run.id)

    return trigger


class Lease:
    """``.e4t-watch.lease`` in the watched folder: who scans it, until when.

    Created exclusively (:func:`e4t.io.create_exclusive`); the holder renews it every scan;
    a lease past its expiry may be taken over. Two standbys taking over one expired lease
    at the same moment can both believe they hold it for a scan: the batches' idempotency
    keys still start each batch once."""

    def __init__(self, folder: str, ttl_s: float, owner: str | None = None) -> None:
        self.url = eio.join(folder, LEASE)
        self.ttl_s = ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s}).encode()

    def acquire(self) -> bool:
        """True when this watcher holds the lease for the next ``ttl_s`` seconds."""
        if eio.create_exclusive(self.url, self._record()):
            return True
        try:
            current = json.loads(eio.read_text(self.url))
        except (FileNotFoundError, json.JSONDecodeError):
            return eio.create_exclusive(self.url, self._record())
        if current.get("owner") == self.owner:
            eio.write_bytes(self.url, self._record())  # renew
            return True
        if float(current.get("expires", 0)) < time.time():  # expired: take it over
            eio.remove(self.url)
            return eio.create_exclusive(self.url, self._record())
        return False

    def release(self) -> None:
        try:
            if json.loads(eio.read_text(self.url)).get("owner") == self.owner:
                eio.remove(self.url)
        except (FileNotFoundError, json.JSONDecodeError):
            pass


def scan_once(
    folder: str,
    out_root: str,
    model_uri: str,
    trigger: Trigger,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Trigger every ready batch not triggered before; returns the batches started now."""
    state_url = eio.join(folder, STATE)
    state = json.loads(eio.read_text(state_url)) if eio.exists(state_url) else {"batches": {}}
    started = []
    for name in ready_batches(folder):
        if name in state["batches"]:
            continue
        parameters = {
            "images_url": eio.join(folder, name),
            "output_url": eio.join(out_root, name),
            "model_uri": model_uri,
            **(extra or {}),
        }
        run_id = trigger(parameters, batch_key(folder, name))
        state["batches"][name] = {"flow_run_id": run_id, "at": time.time()}
        eio.write_text(state_url, json.dumps(state, indent=1))  # after each batch
        logger.info("batch %s → flow run %s", name, run_id)
        started.append(name)
    return started


def watch(
    folder: str,
    out_root: str,
    model_uri: str,
    trigger: Trigger,
    interval_s: float = 30.0,
    max_backoff_s: float = 600.0,
    max_scans: int | None = None,
    lease: Lease | None = None,
    on_started: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Scan every ``interval_s`` while holding the folder's lease; back off (doubling, up to
    ``max_backoff_s``) after an error and go on. ``max_scans``: stop after that many scans
    (None: forever). Returns the number of failed scans."""
    lease = lease or Lease(folder, ttl_s=max(3 * interval_s, 60.0))
    failures = consecutive = scans = 0
    try:
        while max_scans is None or scans < max_scans:
            scans += 1
            try:
                if lease.acquire():
                    for name in scan_once(folder, out_root, model_uri, trigger):
                        if on_started:
                            on_started(name)
                else:
                    logger.debug("%s is watched by another watcher; standing by", folder)
                consecutive = 0
                wait = interval_s
            except Exception as err:  # an outage must not end the watcher
                failures += 1
                consecutive += 1
                wait = min(max_backoff_s, interval_s * 2**consecutive)
                logger.warning("scan of %s failed (%s); retrying in %.0f s", folder, err, wait)
            if max_scans is None or scans < max_scans:
                sleep(wait)
    finally:
        lease.release()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="watched folder or s3:// prefix")
    parser.add_argument("--out-root", required=True, help="outputs go to OUT_ROOT/<batch>")
    parser.add_argument("--model-uri", default="models:/e4t-faces@champion")
    parser.add_argument("--deployment", default=DEPLOYMENT)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between scans")
    parser.add_argument(
        "--max-backoff", type=float, default=600.0, help="longest wait after failed scans"
    )
    parser.add_argument("--once", action="store_true", help="scan once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def started(name: str) -> None:
        print(f"started {args.deployment} for batch {name}", flush=True)

    failures = watch(
        args.folder,
        args.out_root,
        args.model_uri,
        deployment_trigger(args.deployment),
        interval_s=args.interval,
        max_backoff_s=args.max_backoff,
        max_scans=1 if args.once else None,
        on_started=started,
    )
    return 1 if args.once and failures else 0


if __name__ == "__main__":
    sys.exit(main())
