"""``make demo``: the pipeline on the embedded default (sample photos, tiny preset,
ephemeral Prefect, local MLflow database): ``curate-domain``, then ``pretrain-domain`` for
a short schedule, then ``personalize-bulk`` on the sample photos with the registered model
(``models:/e4t-faces@candidate``), writing concepts and previews, then ``evaluate`` of that
model and its baselines on the personalized concepts (report + MLflow run + promotion).

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="output folder (default: <data dir>/demo)")
    parser.add_argument("--steps", type=int, default=20, help="pretraining steps")
    args = parser.parse_args(argv)

    from e4t.config import data_dir
    from e4t.samples import fetch_sample_photos
    from e4t.tracking import ui_command

    out = Path(args.out).resolve() if args.out else data_dir() / "demo"
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.mkdtemp(prefix="e4t-prefect-"))))
    photos = fetch_sample_photos(out / "photos")

    from flows.curate_domain import curate_domain
    from flows.pretrain_domain import pretrain_domain

    result = curate_domain(source_url=str(photos), output_url=str(out / "shards"), preset="tiny")
    trained = pretrain_domain(
        shards_url=str(out / "shards"),
        output_url=str(out / "pretrain"),
        base_model=str(data_dir() / "models" / "tiny"),
        init_preset="tiny",
        preset="tiny",
        steps=args.steps,
    )
    from flows.personalize_bulk import personalize_bulk

    personalized = personalize_bulk(
        images_url=str(photos),
        model_uri=trained["alias_uri"],
        output_url=str(out / "concepts"),
        preset="tiny",
    )
    from flows.evaluate import evaluate

    evaluated = evaluate(
        model_uri=trained["alias_uri"],
        concepts_url=str(out / "concepts"),
        output_url=str(out / "evaluation"),
        preset="tiny",
    )
    stats = result["stats"]
    print()
    print(f"curate-domain: {stats['num_inputs']} photos → {stats['num_samples']} aligned faces")
    for shard in stats["shards"]:
        print(f"  shard     {out / 'shards' / shard}")
    print(f"  manifest  {out / 'shards' / 'manifest.jsonl'}")
    print(f"  stats     {out / 'shards' / 'stats.json'}")
    print(f"  MLflow dataset run {result['mlflow_run_id']}")
    print(
        f"pretrain-domain: {trained['final'].get('step')} steps, final loss "
        f"{trained['final'].get('loss', float('nan')):.4f}"
    )
    print(f"  domain model {out / 'pretrain' / 'model'}")
    print(
        f"  MLflow run {trained['run_id']}, registered {trained['model_uri']} "
        f"({trained['alias_uri']})"
    )
    summary = personalized["summary"]
    print(
        f"personalize-bulk: {summary['num_done']} of {summary['num_concepts']} photos "
        f"personalized ({summary['seconds_per_concept']:.2f} s per concept), "
        f"{summary['num_rejected']} rejected"
    )
    print(f"  concepts  {out / 'concepts' / 'concepts'}")
    print(f"  previews  {out / 'concepts' / 'previews'}")
    print(f"  results   {out / 'concepts' / 'results.jsonl'}")
    decision = evaluated.get("promotion") or {}
    print(
        f"evaluate: {evaluated['num_concepts']} concepts × E4T and baselines; promotion "
        f"({decision.get('metric')}): {'promoted' if decision.get('promoted') else 'kept'} "
        f"— {decision.get('reason')}"
    )
    print(f"  report    {evaluated['urls']['report']}")
    print(f"  MLflow run {evaluated['mlflow_run_id']}")
    print("open the MLflow UI with:")
    print(f"    .venv/bin/{ui_command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
