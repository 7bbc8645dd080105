"""Each stage's job is one sequence of steps; the step runner is the only seam between it and
whoever runs it (the CLI in-process, the flows as Prefect tasks)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from e4t.config import CurateConfig, load_config
from e4t.jobs import curate
from e4t.jobs.steps import InProcess, StepTable

_TABLE = StepTable("test-job")


@_TABLE.step("square")
def _square(x: int) -> int:
    return x * x


def _not_a_step(x: int) -> int:
    return x


@_TABLE.step("tagged")
def _tagged(x: int, on_value: Callable[[int], None] | None = None) -> int:
    if on_value is not None:
        on_value(x)
    return x


def test_in_process_runner_maps_over_workers_and_hands_callbacks_to_their_step() -> None:
    seen: list[int] = []
    runner = InProcess(num_workers=2, callbacks={_tagged: {"on_value": seen.append}})
    assert sorted(runner.map(_square, [(i,) for i in range(5)])) == [0, 1, 4, 9, 16]
    assert runner.call(_tagged, 3) == 3 and seen == [3]
    assert runner.call(_square, 4) == 16  # no callbacks registered: none passed


def test_a_function_outside_every_step_table_is_refused_by_each_runner() -> None:
    import pytest

    from flows.steps import PrefectSteps
    from tasks.retry import tasks_for

    for runner in (InProcess(), PrefectSteps(tasks_for(_TABLE))):
        with pytest.raises(TypeError, match="_not_a_step is not a job step"):
            runner.call(_not_a_step, 1)
    with pytest.raises(ValueError, match="outside the test-job table"):
        tasks_for(_TABLE, custom={_not_a_step: None})  # type: ignore[dict-item]


def test_every_step_a_job_runs_is_in_its_table_and_has_its_prefect_task() -> None:
    """Each job's ``run`` calls only steps of its own table, and ``tasks/`` has a task for
    every entry with the table's settings, custom tasks included: a missing task cannot
    exist, and a setting is written once."""
    import ast
    import importlib
    import inspect

    from tasks.retry import retry_transient

    for stage in ("curate", "pretrain", "personalize", "evaluate"):
        job = importlib.import_module(f"e4t.jobs.{stage}")
        tasks = importlib.import_module(f"tasks.{stage}").STEPS
        called = {
            node.args[0].id
            for node in ast.walk(ast.parse(inspect.getsource(job.run)))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"call", "map"}
            and node.args
            and isinstance(node.args[0], ast.Name)
        }
        assert called, stage
        for name in called:
            assert getattr(job, name) in job.STEPS, f"{stage}: {name} is in no step table"
        assert set(tasks) == set(job.STEPS.specs), stage
        for spec in job.STEPS:
            made = tasks[spec.fn]
            assert made.name == spec.name
            assert made.retries == spec.retries
            assert set(made.tags) == set(spec.tags)
            assert made.timeout_seconds == spec.timeout_seconds
            delay = spec.delay_seconds
            if spec.retries:
                assert made.retry_delay_seconds == (
                    list(delay) if isinstance(delay, tuple) else delay
                )
                assert made.retry_condition_fn is retry_transient


class Recording(InProcess):
    """Runs the steps here and records their names, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def call(self, step: Callable[..., Any], *args: Any) -> Any:
        self.calls.append(step.__name__)
        return super().call(step, *args)

    def map(self, step: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        self.calls.append(f"map {step.__name__} × {len(calls)}")
        return super().map(step, calls)


def test_curation_job_runs_its_steps_in_order_and_a_rerun_only_checks(
    photos_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("obama.jpg", "biden.jpg", "chelsea.png"):
        shutil.copyfile(photos_dir / name, src / name)
    config = load_config(CurateConfig, "curate", "tiny", {"shards.num_images_per_partition": 2})
    runner = Recording()
    request = curate.CurateRequest(str(src), str(tmp_path / "out"), config, track=False)
    result = curate.run(request, runner)
    # in-process, the map runs each partition through call()
    assert runner.calls == ["plan", "map partition × 2", "partition", "partition", "finalize"]
    assert result.stats["num_inputs"] == 3 and result.mlflow_run_id is None

    again = Recording()
    rerun = curate.run(request, again)
    assert again.calls == ["plan", "finalize"]  # finished: the plan is checked, nothing redone
    assert rerun.stats == result.stats and rerun.wall_seconds == 0.0


@pytest.mark.slow
def test_personalize_job_redoes_concepts_of_another_model_and_logs_once(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from e4t.config import ModelConfig, PersonalizeConfig
    from e4t.jobs import personalize
    from e4t.models.e4t_model import E4TModel
    from e4t.tracking import log_personalization, tracking_uri

    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    base = ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32})
    one = E4TModel.from_config(base, seed=1).save_pretrained(tmp_path / "one")
    two = E4TModel.from_config(base, seed=2).save_pretrained(tmp_path / "two")
    config = load_config(PersonalizeConfig, "personalize", "tiny", {"tune.num_steps": 1})
    out = str(tmp_path / "out")

    def run(model: Path, config: PersonalizeConfig) -> personalize.PersonalizeResult:
        return personalize.run(
            personalize.request(str(images), out, str(model), config, track=False)
        )

    first = run(one, config)
    again = run(one, config)
    assert first.summary["num_done"] == 1 and again.summary["num_skipped"] == 1
    other_model = run(two, config)
    assert other_model.summary["num_skipped"] == 0  # made by another model: redone
    other_config = load_config(PersonalizeConfig, "personalize", "tiny", {"tune.num_steps": 2})
    redone = run(two, other_config)
    assert redone.summary["num_skipped"] == 0 and redone.rows[0]["steps"] == 2

    # a retried logging task: one parent run, its children once
    rows, summary = redone.rows, redone.summary
    params = {"model_uri": str(two)}
    parent = log_personalization(out, rows, summary, params, "e4t-idempotence")
    assert log_personalization(out, rows, summary, params, "e4t-idempotence") == parent
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name("e4t-idempotence")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert len(runs) == 2  # the parent and one concept run


def test_pretrain_and_curate_flags_are_the_flows_parameters_and_the_clis_dests() -> None:
    """One mapping from flat parameter to config key: every FLAGS name is a parameter of
    the stage's flow and a dest of its CLI command."""
    import inspect

    from e4t.cli import build_parser
    from e4t.jobs import pretrain
    from flows.curate_domain import curate_domain
    from flows.pretrain_domain import pretrain_domain

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for job, flow_fn, command in (
        (pretrain, pretrain_domain, "pretrain"),
        (curate, curate_domain, "curate"),
    ):
        params = inspect.signature(flow_fn.fn).parameters
        dests = {a.dest for a in sub.choices[command]._actions}  # type: ignore[union-attr]
        for name in job.FLAGS:
            assert name in params, (command, name)
        cli_flags = set(job.FLAGS) & dests
        assert command == "curate" or cli_flags == {"shards_url", "steps", "batch_size", "device"}
    assert pretrain.FLAGS["steps"] == "train.num_steps"  # training steps, in this flow


def test_pretrain_request_resolves_the_config_for_its_world_once(tmp_path: Path) -> None:
    """The CLI's arguments and the flow's parameters make the same request; the global
    batch is train.batch_size × optim.grad_accum × ranks, grad_accum fixed for the world."""
    import pytest

    from e4t.cli import build_parser
    from e4t.config import LaunchConfig
    from e4t.jobs import pretrain

    out = str(tmp_path / "out")
    launch = LaunchConfig(nproc_per_node=2)
    sets = ["train.global_batch=12"]
    from_flow = pretrain.request(
        out, preset="tiny", overrides=sets, launch=launch, shards_url="s", steps=3,
        batch_size=2, device="cpu", experiment=None, domain=None, base_model=None,
    )  # fmt: skip
    args = build_parser().parse_args(
        ["pretrain", "s", out, "--preset", "tiny", "--set", sets[0], "--train-steps", "3",
         "--batch-size", "2", "--device", "cpu", "--nproc-per-node", "2"]
    )  # fmt: skip
    from_cli = pretrain.request(
        out, preset=args.preset, overrides=args.overrides, launch=launch,
        **{name: getattr(args, name, None) for name in pretrain.FLAGS},
    )  # fmt: skip
    assert from_cli == from_flow
    config = from_flow.config
    assert (config.data.shards, config.train.num_steps, config.model.device) == ("s", 3, "cpu")
    assert config.optim.grad_accum == 3 and from_flow.global_batch == 12
    assert from_flow.describe_batch() == (
        "global batch 12 = 2 per rank × 3 accumulation × 2 rank(s)"
    )
    with pytest.raises(TypeError, match="no parameter train_steps"):
        pretrain.request(out, train_steps=3)
