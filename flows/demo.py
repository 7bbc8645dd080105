"""``make demo``: ``e4t-pipeline`` on the embedded default (sample photos, tiny preset,
ephemeral Prefect, local MLflow database): ``curate-domain``, ``pretrain-domain`` for a
short schedule (registered as ``models:/e4t-faces@candidate``), ``personalize-bulk`` of the
sample photos with that version, then ``evaluate`` of it and its baselines on the
personalized concepts (report + MLflow run + promotion). A rerun skips what is done.

Pretraining and evaluation run the ``demo`` presets (configs/pretrain/demo.yaml,
configs/evaluate/demo.yaml): the tiny ones with less work where the time goes (one preview
grid, 2 concepts × 2 budgets evaluated), every stage, preview and baseline kept.

    python -m flows.demo [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Ephemeral Prefect on 2 cores needs ~25 s to start; the default timeout is 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


#: the demo's own presets where the tiny ones do more than a demo needs (the tests run tiny)
DEMO_STAGE_PRESETS = {"pretrain": "demo", "evaluate": "demo"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="output folder (default: <data dir>/demo)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pretraining steps (default: train.num_steps of configs/pretrain/demo.yaml)",
    )
    args = parser.parse_args(argv)
    # Before torch loads (here and in torchrun's ranks, which inherit it): the tiny model's
    # ops are too small to gain from a second thread, and while other work holds the cores
    # two OpenMP threads per op wait on each other — the pretraining preview grid took
    # 8–23 s with 2 threads, 1.7–1.9 s with 1 (back to back, on 2 busy cores).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from e4t.quiet import quiet_libraries

    quiet_libraries()  # no per-file or download bars, no MLflow model-logging hints

    from e4t.config import data_dir
    from e4t.samples import fetch_sample_photos
    from e4t.tracking import ui_command

    out = Path(args.out).resolve() if args.out else data_dir() / "demo"
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.mkdtemp(prefix="e4t-prefect-"))))
    photos = fetch_sample_photos(out / "photos")

    from flows.pipeline import e4t_pipeline

    result = e4t_pipeline(
        photos_url=str(photos),
        work_url=str(out),
        base_model=str(data_dir() / "models" / "tiny"),
        init_arch="tiny",
        preset="tiny",
        pretrain_steps=args.steps,
        stage_presets=DEMO_STAGE_PRESETS,
    )
    stats, final = result["stats"], result["final"]
    print()
    print(f"curate-domain: {stats['num_inputs']} photos → {stats['num_samples']} aligned faces")
    for shard in stats["shards"]:
        print(f"  shard     {out / 'shards' / shard}")
    print(f"  manifest  {out / 'shards' / 'manifest.jsonl'}")
    print(f"  MLflow dataset run {result['dataset_run_id']}")
    print(
        f"pretrain-domain: {final.get('step')} steps, final loss "
        f"{final.get('loss', float('nan')):.4f}"
    )
    print(f"  domain model {out / 'pretrain' / 'model'}")
    print(
        f"  MLflow run {result['pretrain_run_id']}, registered {result['model_uri']} "
        f"({result['alias_uri']})"
    )
    summary = result["personalize_summary"]
    print(
        f"personalize-bulk: {summary['num_done']} of {summary['num_concepts']} photos "
        f"personalized ({summary['num_skipped']} already done; "
        f"{summary['seconds_per_concept']:.2f} s per concept), {summary['num_rejected']} rejected"
    )
    print(f"  concepts  {out / 'concepts' / 'concepts'}")
    print(f"  previews  {out / 'concepts' / 'previews'}")
    print(f"  MLflow run {result['personalize_run_id']} (one child run per concept)")
    decision = result.get("promotion") or {}
    print(
        f"evaluate: {result['num_evaluated']} concepts, E4T against Textual Inversion and "
        f"E4T without pretraining; @champion ({decision.get('metric')}): "
        f"{'moved' if decision.get('promoted') else 'kept'} — {decision.get('reason')}"
        + (
            " (recorded by the earlier run; nothing re-evaluated)"
            if result["evaluation_skipped"]
            else ""
        )
    )
    print(f"  report    {result['report_url']}")
    print(f"  MLflow run {result['evaluation_run_id']}")
    print("open the MLflow UI with:")
    print(f"    .venv/bin/{ui_command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
