"""Trigger ``personalize-bulk`` when a new batch of images lands in a folder.

A batch is a sub-folder of the watched folder holding a ``READY`` file (written last by
whoever uploads the batch, so a half-copied folder is never picked up). Each ready batch
starts one run of the deployment, with ``images_url`` = the batch and ``output_url`` =
``OUT_ROOT/<batch name>``. Triggered batches are remembered in ``.e4t-watch.json`` in the
watched folder, so a restarted watcher never starts a batch twice.

    python -m flows.watch data/inbox --out-root data/concepts \\
        --model-uri models:/e4t-faces@champion [--interval 30] [--once]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from e4t import io as eio

logger = logging.getLogger(__name__)

READY = "READY"
STATE = ".e4t-watch.json"
DEPLOYMENT = "personalize-bulk/personalize-bulk"

Trigger = Callable[[dict[str, Any]], str]


def ready_batches(folder: str) -> list[str]:
    """Sub-folders of ``folder`` holding a READY marker, sorted."""
    fs, path = eio.get_fs(folder)
    batches = []
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        if entry["type"] == "directory" and fs.exists(f"{entry['name'].rstrip('/')}/{READY}"):
            batches.append(entry["name"].rstrip("/").rsplit("/", 1)[-1])
    return batches


def deployment_trigger(deployment: str = DEPLOYMENT) -> Trigger:
    """Start a run of ``deployment`` on the configured Prefect API; returns its id."""
    from prefect.deployments import run_deployment

    def trigger(parameters: dict[str, Any]) -> str:
        run = run_deployment(deployment, parameters=parameters, timeout=0)
        return str(run.id)

    return trigger


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
        run_id = trigger(parameters)
        state["batches"][name] = {"flow_run_id": run_id, "at": time.time()}
        eio.write_text(state_url, json.dumps(state, indent=1))  # after each: no double start
        logger.info("batch %s → flow run %s", name, run_id)
        started.append(name)
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="watched folder or s3:// prefix")
    parser.add_argument("--out-root", required=True, help="outputs go to OUT_ROOT/<batch>")
    parser.add_argument("--model-uri", default="models:/e4t-faces@champion")
    parser.add_argument("--deployment", default=DEPLOYMENT)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between scans")
    parser.add_argument("--once", action="store_true", help="scan once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trigger = deployment_trigger(args.deployment)
    while True:
        started = scan_once(args.folder, args.out_root, args.model_uri, trigger)
        for name in started:
            print(f"started {args.deployment} for batch {name}", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
