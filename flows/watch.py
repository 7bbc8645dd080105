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
- a batch whose run FAILED or CRASHED is started again on the next scan under a new attempt
  key, up to ``--max-attempts`` runs in all (each attempt recorded in the state file); a
  batch whose run is scheduled, running, completed or cancelled is never started again. After
  the last attempt it is left alone until ``--retry BATCH`` asks for another round;
- the model URI and the output root are checked before anything is triggered (at start and
  on every scan that has a batch to start): an alias that does not exist yet, such as
  ``@champion`` before the first evaluation promoted one, is a clear refusal, not a failed
  run that uses the batch up;
- one watcher per folder scans at a time: it holds ``.e4t-watch.lease`` (created
  exclusively, renewed every scan, taken over when it expires), so a second watcher on the
  same folder waits as a standby;
- listings are fresh on every scan (s3fs would otherwise cache a prefix's listing for the
  life of the process and never see a new batch);
- an error (the Prefect API or the store unreachable) is logged and the scan retried
  after an exponential back-off (``--interval`` doubling up to ``--max-backoff``).

    python -m flows.watch data/inbox --out-root data/concepts \\
        --model-uri models:/e4t-faces@champion [--interval 30] [--once] [--max-attempts 3]
    python -m flows.watch data/inbox --out-root data/concepts --retry b7   # once more, by hand
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
# flow run id → its state type ("FAILED", "COMPLETED", ...), None when unknown
StateOf = Callable[[str], "str | None"]
RETRYABLE = frozenset({"FAILED", "CRASHED"})  # a cancelled run was stopped on purpose


class WatchError(RuntimeError):
    """The watcher cannot start a batch as configured (model URI, output root): one line."""


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


def attempt_key(folder: str, name: str, generation: int = 0, attempt: int = 1) -> str:
    """The key of one attempt of a batch: the first attempt keeps :func:`batch_key`, so a
    state file written before retries existed still matches its run."""
    key = batch_key(folder, name)
    return key if (generation, attempt) == (0, 1) else f"{key}-g{generation}-a{attempt}"


def check_targets(model_uri: str, out_root: str) -> None:
    """Refuse, in one line, a model URI that names nothing now (an alias not set yet, a
    version or folder that does not exist) or an output root that cannot be created."""
    from e4t.tracking.registry import check_model_folder, resolve_model_version

    try:
        if model_uri.startswith("models:/"):
            resolve_model_version(model_uri)
        elif not model_uri.startswith("runs:/"):
            check_model_folder(model_uri)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WatchError(
            f"--model-uri {model_uri}: {first}. Nothing was started; pass a model that exists "
            "(e.g. models:/e4t-faces@candidate before an evaluation has promoted @champion)"
        ) from err
    try:
        eio.makedirs(out_root)
    except OSError as err:
        raise WatchError(f"--out-root {out_root}: cannot be created ({err})") from err


def deployment_states() -> StateOf:
    """The state type of a flow run on the configured Prefect API."""
    from prefect.client.orchestration import get_client

    def state_of(run_id: str) -> str | None:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(run_id))
        return run.state.type.value if run.state is not None else None

    return state_of


def request_retry(folder: str, name: str) -> dict[str, Any]:
    """Ask for another round of attempts for batch ``name`` (after its last attempt failed):
    the next scan starts it under a new generation of keys. Returns its new record."""
    state_url = eio.join(folder, STATE)
    state = json.loads(eio.read_text(state_url)) if eio.exists(state_url) else {"batches": {}}
    old = state["batches"].get(name, {})
    record = {**old, "generation": int(old.get("generation", 0)) + 1, "retry": True}
    record.pop("gave_up", None)
    state["batches"][name] = record
    eio.write_text(state_url, json.dumps(state, indent=1))
    return record


def _wants_a_run(
    name: str, record: dict[str, Any], state_of: StateOf | None, max_attempts: int
) -> bool:
    """Whether a batch seen before is started again now (see the module's docstring)."""
    if record.get("retry"):
        return True
    if record.get("gave_up") or state_of is None or "flow_run_id" not in record:
        return False
    if state_of(str(record["flow_run_id"])) not in RETRYABLE:
        return False
    if int(record.get("attempt", 1)) >= max_attempts:
        record["gave_up"] = True
        logger.error(
            "batch %s failed %d times; not started again (by hand: python -m flows.watch "
            "FOLDER --out-root OUT --retry %s)",
            name,
            int(record.get("attempt", 1)),
            name,
        )
        return False
    return True


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
    state_of: StateOf | None = None,
    max_attempts: int = 3,
    check: Callable[[], None] | None = None,
) -> list[str]:
    """Trigger every ready batch not triggered before, and every batch whose last run
    failed or crashed (``state_of``) with attempts left; returns the batches started now.
    ``check`` runs once before the first trigger (a refusal starts nothing)."""
    state_url = eio.join(folder, STATE)
    state = json.loads(eio.read_text(state_url)) if eio.exists(state_url) else {"batches": {}}
    started = []
    checked = False
    for name in ready_batches(folder):
        record = state["batches"].get(name)
        if record is not None:
            gave_up = bool(record.get("gave_up"))
            if not _wants_a_run(name, record, state_of, max_attempts):
                if record.get("gave_up") and not gave_up:  # recorded once, when it happens
                    eio.write_text(state_url, json.dumps(state, indent=1))
                continue
        if check is not None and not checked:
            check()
            checked = True
        parameters = {
            "images_url": eio.join(folder, name),
            "output_url": eio.join(out_root, name),
            "model_uri": model_uri,
            **(extra or {}),
        }
        record = dict(record or {})
        new_round = bool(record.pop("retry", False))
        generation = int(record.get("generation", 0))
        attempt = 1 if new_round or not record else int(record.get("attempt", 1)) + 1
        history = list(record.get("attempts", []))
        while True:
            run_id = trigger(parameters, attempt_key(folder, name, generation, attempt))
            history.append(
                {"generation": generation, "attempt": attempt, "flow_run_id": run_id,
                 "at": time.time()}
            )  # fmt: skip
            # a key the server has seen hands back its run: a failed one means go on
            current = state_of(run_id) if state_of is not None else None
            if attempt < max_attempts and current in RETRYABLE:
                attempt += 1
                continue
            break
        state["batches"][name] = {
            "flow_run_id": run_id,
            "at": time.time(),
            "attempt": attempt,
            "generation": generation,
            "attempts": history,
            **({"gave_up": True} if current in RETRYABLE else {}),
        }
        eio.write_text(state_url, json.dumps(state, indent=1))  # after each batch
        if current in (None, "SCHEDULED", "PENDING"):
            logger.info("batch %s → flow run %s (attempt %d)", name, run_id, attempt)
            started.append(name)
        else:  # the server handed back a run it already had (a state file lost)
            logger.warning("batch %s: its flow run %s is %s already", name, run_id, current)
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
    state_of: StateOf | None = None,
    max_attempts: int = 3,
    check: Callable[[], None] | None = None,
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
                    for name in scan_once(
                        folder,
                        out_root,
                        model_uri,
                        trigger,
                        state_of=state_of,
                        max_attempts=max_attempts,
                        check=check,
                    ):
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
    parser.add_argument(
        "--max-attempts", type=int, default=3, help="runs per batch when runs fail or crash"
    )
    parser.add_argument(
        "--retry", metavar="BATCH", help="give a batch whose attempts all failed another round"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # the Prefect client's every request ("HTTP Request: POST …") is not the watcher's news
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.max_attempts < 1:
        parser.error("--max-attempts must be at least 1")
    if args.retry:
        record = request_retry(args.folder, args.retry)
        print(f"batch {args.retry}: retried on the next scan (round {record['generation']})")
        return 0
    try:
        check_targets(args.model_uri, args.out_root)
    except WatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

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
        state_of=deployment_states(),
        max_attempts=args.max_attempts,
        check=lambda: check_targets(args.model_uri, args.out_root),
    )
    return 1 if args.once and failures else 0


if __name__ == "__main__":
    sys.exit(main())
