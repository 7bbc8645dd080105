"""``e4t evaluate``: identity, prompt alignment and speed against the baselines."""

from __future__ import annotations

import argparse

from e4t.cli.common import add_config_args
from e4t.evaluation.methods import METHODS, baseline_names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="stage 4: identity, prompt alignment and speed against baselines",
        description="Tune each concept with E4T and the baselines (Textual Inversion, E4T "
        "without pretraining) at each budget, generate, score identity / CLIP-T / CLIP-I / "
        "diversity, write report.html, log one MLflow run and move @champion when the "
        "candidate beats it.",
    )
    p.add_argument("concepts", help="folder of face photos, or a personalize-bulk output")
    p.add_argument(
        "--model", required=True, help="models:/e4t-faces@candidate, a version URI, or a folder"
    )
    p.add_argument("--out", required=True, help="output folder or URL for the report")
    add_config_args(p)
    # dest: the job's FLAGS names (e4t.jobs.evaluate.FLAGS, the flow's parameters)
    p.add_argument(
        "--prompt", dest="prompts", action="append", help="a prompt with {} (repeatable)"
    )
    p.add_argument("--seeds", dest="seeds", type=int, nargs="+")
    p.add_argument(
        "--tune-steps",
        dest="steps",
        type=int,
        nargs="+",
        help="tuning budgets reported, e.g. 0 5 15 50",
    )
    p.add_argument(
        "--baselines",
        dest="baselines",
        nargs="*",
        choices=baseline_names(),  # the method registry, e4t.evaluation.methods
        default=None,
        help="methods beside e4t: "
        + "; ".join(f"{name}: {METHODS[name].label}" for name in baseline_names()),
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-track", action="store_true", help="no MLflow run, no promotion")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.jobs import evaluate as job
    from e4t.jobs.steps import InProcess
    from e4t.tracking import ui_command

    params = {name: getattr(args, name) for name in job.FLAGS}
    request = job.request(
        args.model,
        args.concepts,
        args.out,
        preset=args.preset,
        overrides=args.overrides,
        device=args.device,
        track=not args.no_track,
        **params,
    )
    with tqdm(total=100, desc="evaluate", unit="%") as bar:

        def on_progress(fraction: float) -> None:
            bar.update(round(100 * fraction) - bar.n)

        out = job.run(request, InProcess(callbacks={job.evaluate: {"on_progress": on_progress}}))
    if out.skipped:
        print(f"{args.out} already holds this evaluation of this version; nothing to do")
    print(f"report: {out.urls.report}")
    decision = out.promotion
    if decision:
        verdict = "promoted" if decision["promoted"] else "kept"
        print(f"promotion ({decision['metric']}): {verdict}: {decision.get('reason')}")
    if out.mlflow_run_id:
        print(f"MLflow run {out.mlflow_run_id}; open the UI: {ui_command()}")
    return 0
