"""The evaluation methods are one registry (e4t/evaluation/methods/): every name in it is a
config value, a CLI choice, a flow parameter value and a labelled report entry."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from e4t.config import EvaluateConfig
from e4t.evaluation.methods import (
    METHODS,
    baseline_names,
    default_methods,
    method_names,
    primary_method,
)

ROOT = Path(__file__).resolve().parent.parent


def test_each_method_is_one_class_in_its_own_module() -> None:
    assert method_names() == list(METHODS) and len(METHODS) >= 5
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__module__ == f"e4t.evaluation.methods.{name.replace('-', '_')}", name
        assert cls.label and cls.description and cls.colour.startswith("#"), name
    assert primary_method() == "e4t" and primary_method() not in baseline_names()
    assert set(baseline_names()) | {primary_method()} == set(METHODS)
    assert default_methods() == ["e4t", "textual-inversion", "no-pretraining"]
    assert EvaluateConfig().methods == default_methods()
    assert METHODS["e4t-frozen"].scored_on == "e4t"  # no pass of its own
    # a method's module reads nothing of e4t but the base (e4t.config imports the registry)
    for path in (ROOT / "e4t" / "evaluation" / "methods").glob("*.py"):
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        project = {m for m in imported if m.split(".")[0] == "e4t"}
        allowed = {m for m in project if m.startswith("e4t.evaluation.methods")}
        if path.name == "base.py":  # for type checking only: modules that import no config
            allowed |= {"e4t.data.transforms", "e4t.models.concept"}
        assert project == allowed, path.name


def test_the_registry_loads_without_torch() -> None:
    code = "import sys, e4t.evaluation.methods; assert 'torch' not in sys.modules, 'torch'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_registry_name_is_accepted_by_the_config_the_cli_and_the_flow() -> None:
    from e4t.cli import build_parser
    from flows.evaluate import evaluate

    parser = build_parser()
    base = ["evaluate", "photos", "--model", "m", "--out", "o"]
    for name in method_names():
        assert EvaluateConfig(methods=[name]).methods == [name]
    for name in baseline_names():
        assert parser.parse_args([*base, "--baselines", name]).baselines == [name]
        assert evaluate.validate_parameters({"baselines": [name]})["baselines"] == [name]
    assert parser.parse_args([*base, "--baselines", *baseline_names()]).baselines == (
        baseline_names()
    )
    # a name the registry does not hold is refused by each
    with pytest.raises(ValueError, match="e4t-frozen"):
        EvaluateConfig(methods=["dreambooth"])
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--baselines", "dreambooth"])
    with pytest.raises(Exception, match="baselines"):
        evaluate.validate_parameters({"baselines": ["dreambooth"]})


def test_the_flow_and_the_cli_map_their_parameters_with_the_jobs_flags(tmp_path: Path) -> None:
    """One FLAGS mapping: each name is a flow parameter and a CLI dest, and the request made
    from it holds the config values (baselines beside the primary method)."""
    import inspect

    from PIL import Image

    from e4t.cli import build_parser
    from e4t.jobs import evaluate as job
    from flows.evaluate import evaluate

    flow_params = inspect.signature(evaluate.fn).parameters
    args = build_parser().parse_args(
        ["evaluate", "photos", "--model", "m", "--out", "o", "--prompt", "a {}", "--seeds",
         "3", "--tune-steps", "0", "2", "--baselines", "e4t-frozen"]
    )  # fmt: skip
    assert all(name in flow_params for name in job.FLAGS)
    params = {name: getattr(args, name) for name in job.FLAGS}
    assert params == {"prompts": ["a {}"], "seeds": [3], "steps": [0, 2],
                      "baselines": ["e4t-frozen"]}  # fmt: skip

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "ada.png")
    request = job.request(str(tmp_path / "model"), str(photos), str(tmp_path / "out"),
                          preset="tiny", track=False, **params)  # fmt: skip
    config = request.config
    assert config.methods == ["e4t", "e4t-frozen"] and config.steps == [0, 2]
    assert config.prompts == ["a {}"] and config.seeds == [3]
    assert request.model.version_uri == str(tmp_path / "model") and request.registered is None
    assert pickle.loads(pickle.dumps(request)) == request  # Prefect's process runners
    with pytest.raises(TypeError, match="no parameter baseline"):
        job.request("m", str(photos), "o", baseline=["e4t-full"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images to evaluate"):
        job.request("m", str(tmp_path / "empty"), "o")  # checked before the model is pinned


def test_the_report_labels_every_method() -> None:
    from e4t.evaluation.report import COLOURS, render_html, render_markdown
    from e4t.evaluation.results import METRICS, EvalResult

    names = method_names()
    result = EvalResult(
        config={"prompts": ["a photo of {}"], "steps": [0], "seeds": [0], "methods": names},
        config_hash="h",
        concepts=[],
        rejected=[],
        summary={name: {0: dict.fromkeys(METRICS, 0.5)} for name in names},
    )
    page = render_html(result, {"model_uri": "m"})
    table = page[page.index('<table class="methods">') :]
    table = table[: table.index("</table>")]
    markdown = render_markdown(result, {"model_uri": "m"})
    for name, cls in METHODS.items():
        assert f"<code>{name}</code>" in table and cls.label in table, name
        assert f"- `{name}`: {cls.label}" in markdown
        assert COLOURS[name] == cls.colour
        assert f'fill="{cls.colour}"' in page  # its plot colour


def test_passes_run_each_method_once_and_frozen_rides_on_e4t() -> None:
    from e4t.evaluation.passes import plan_passes

    def names(plan: list) -> list[tuple[str, list[str]]]:
        return [(m.name, [r.name for r in riders]) for m, riders in plan]

    assert names(plan_passes(["e4t-frozen", "e4t"])) == [("e4t", ["e4t-frozen"])]
    assert names(plan_passes(["textual-inversion", "e4t-frozen"])) == [
        ("e4t", ["e4t-frozen"]),
        ("textual-inversion", []),
    ]
    assert names(plan_passes(default_methods())) == [(n, []) for n in default_methods()]
