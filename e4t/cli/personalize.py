"""``e4t personalize``: one concept per person from a folder."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from e4t.cli.common import add_config_args

if TYPE_CHECKING:  # the job is imported when the command runs: --help stays fast
    from e4t.jobs.personalize import PersonalizeRequest


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "personalize",
        help="stage 3: one concept per person from a folder",
        description="Personalize every image (or sub-folder) of IMAGES in a few "
        "tuning steps, many concepts per pass; reruns skip finished concepts.",
    )
    p.add_argument(
        "images",
        help="folder or s3:// prefix of photos (one per concept, or "
        "one sub-folder per concept); optional concepts.csv",
    )
    p.add_argument(
        "--model",
        required=True,
        help="domain model: models:/e4t-faces@candidate, a version URI, or a folder",
    )
    p.add_argument("--out", required=True, help="output folder or URL")
    add_config_args(p)
    # dest: the job's FLAGS names (e4t.jobs.personalize, not imported: fast --help)
    p.add_argument(
        "--tune-steps",
        dest="steps",
        metavar="TUNE_STEPS",
        type=int,
        help="tuning steps per concept (5–15)",
    )
    p.add_argument(
        "--concepts-per-pass", dest="concepts_per_pass", type=int, help="concepts tuned together"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow runs")
    p.add_argument("--experiment", default="e4t-personalize", help="MLflow experiment")
    p.set_defaults(func=run)


def request_of(args: argparse.Namespace) -> PersonalizeRequest:
    """The job's request from the command's arguments (its flags by the job's FLAGS)."""
    from e4t.jobs import personalize as job

    return job.request(
        args.images,
        args.out,
        args.model,
        preset=args.preset,
        overrides=args.overrides,
        device=args.device,
        experiment=args.experiment,
        track=args.track,
        **{name: getattr(args, name) for name in job.FLAGS},
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.jobs import personalize as job

    request = request_of(args)
    with tqdm(desc="personalize", unit="concept") as bar:
        result = job.run(request, on_pass=lambda results: bar.update(len(results)))
    summary = result.summary
    print(
        f"{summary['num_done']} of {summary['num_concepts']} concepts personalized "
        f"({summary['num_skipped']} already done), {summary['num_rejected']} rejected, "
        f"{summary['num_failed']} failed; {summary['seconds_per_concept']:.2f} s per concept"
    )
    for row in result.rows:
        if row["status"] != "done":
            print(f"  {row['concept_id']}: {row['status']} ({row.get('reason')})")
    print(f"results: {args.out.rstrip('/')}/results.jsonl")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} (one child run per concept)")
    return 0
