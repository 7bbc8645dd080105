"""The evaluate flow under Prefect: report, comparable MLflow runs, alias promotion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from e4t.tracking import decide_promotion

ARTIFACTS = Path(__file__).parent / "artifacts"

# small but complete: 2 prompts × 2 seeds, budgets 0 and 2, every method
CHEAP = {"prompts": ["a photo of {}", "a painting of {}"], "seeds": [0, 1], "steps": [0, 2]}


def test_promotion_rule() -> None:
    assert decide_promotion(0.5, None, "max", 0.0) == (True, "no champion yet")
    assert decide_promotion(0.6, 0.5, "max", 0.0)[0]
    assert not decide_promotion(0.6, 0.5, "max", 0.2)[0]
    assert not decide_promotion(0.5, 0.5, "max", 0.0)[0]  # a tie keeps the champion
    assert decide_promotion(0.4, 0.5, "min", 0.0)[0]
    assert not decide_promotion(0.6, 0.5, "min", 0.0)[0]
    assert not decide_promotion(float("nan"), 0.5, "max", -1.0)[0]


def _register(tiny_dir: Path, out: Path, seed: int) -> dict[str, str]:
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel
    from e4t.tracking import register_domain_model, start_pretrain_run

    model = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}), seed=seed
    )
    folder = model.save_pretrained(out / f"domain-{seed}")
    run_id = start_pretrain_run({"domain": "evaltest"}, str(out), {}, "e4t-pretrain", {})
    return register_domain_model(run_id, folder, "evaltest", base_model=str(tiny_dir))


def test_only_an_unset_alias_means_no_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alias that is not set is "no champion"; an unreachable tracking server raises
    (it must never read as a free slot and promote)."""
    from mlflow import MlflowClient

    from e4t.tracking import alias_version

    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    local.create_registered_model("e4t-aliastest")
    assert alias_version(local, "e4t-aliastest", "champion") is None

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    outage = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    with pytest.raises(Exception) as raised:
        alias_version(outage, "e4t-aliastest", "champion")
    assert "127.0.0.1:9" in str(raised.value) or "Connection" in type(raised.value).__name__


@pytest.mark.slow
def test_evaluate_flow_reports_tracks_and_promotes(
    prefect_server: None, photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from e4t.tracking import tracking_uri
    from flows.evaluate import evaluate
    from tests.browser import headless_page

    images = tmp_path / "faces"
    images.mkdir()
    for name in ("obama.jpg", "biden.jpg", "coffee.png"):
        shutil.copyfile(photos_dir / name, images / name)
    v1 = _register(tiny_dir, tmp_path, seed=1)

    def run(model_uri: str, out: str, extra: dict[str, Any]) -> dict[str, Any]:
        return evaluate(
            model_uri=model_uri,
            concepts_url=str(images),
            output_url=str(tmp_path / out),
            preset="tiny",
            overrides=extra,
            **CHEAP,
        )

    first = run("models:/e4t-evaltest@candidate", "eval-1", {})
    results = json.loads((tmp_path / "eval-1" / "results.json").read_text())
    assert {c["name"] for c in results["concepts"]} == {"biden", "obama"}
    assert [(r["name"], r["reason"]) for r in results["rejected"]] == [("coffee", "no_face")]
    assert all(c["concept_id"].startswith(f"{c['name']}-") for c in results["concepts"])
    assert all(c["reference_has_face"] for c in results["concepts"])
    assert set(results["summary"]) == {"e4t", "textual-inversion", "no-pretraining"}
    # 2 concepts × 3 methods × 2 budgets × 2 prompts × 2 seeds, each scored
    assert len(results["samples"]) == 48
    assert all(0.0 <= s["clip_t"] <= 100.0 for s in results["samples"])
    final = results["summary"]["e4t"]["2"]
    assert final["artifact_bytes"] > results["summary"]["textual-inversion"]["2"]["artifact_bytes"]
    assert final["tune_seconds"] > results["summary"]["e4t"]["0"]["tune_seconds"]
    # the tiny model's generations hold no face: they count (identity 0, face rate 0)
    assert final["face_rate"] == 0.0 and final["identity"] == 0.0

    # the report renders: tables, inline images, plots
    report = tmp_path / "eval-1" / "report.html"
    with headless_page() as page:
        page.goto(report.as_uri())
        seen = page.evaluate(
            """({tables: document.querySelectorAll('table').length,
                 summaryRows: document.querySelectorAll('table.summary tbody tr').length,
                 images: document.images.length,
                 decoded: Array.from(document.images)
                   .filter(i => i.complete && i.naturalWidth > 0).length,
                 plots: document.querySelectorAll('svg').length,
                 text: document.body.innerText})"""
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(ARTIFACTS / "evaluation-report.png")
    assert seen["summaryRows"] == 3 and seen["tables"] >= 5 and seen["plots"] == 4
    # 2 inputs + 2 concepts × 3 methods × 2 budgets × 2 prompts, all decoded
    assert seen["images"] == 2 + 24 and seen["decoded"] == seen["images"]
    assert "textual-inversion" in seen["text"] and "CLIP-T" in seen["text"]

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()

    def champion() -> str:
        return str(client.get_model_version_by_alias("e4t-evaltest", "champion").version)

    # the first evaluated version becomes champion (no champion yet), and the run says so,
    # and that the tiny preset promotes a model that draws no faces (min_face_rate=0)
    assert first["promotion"]["promoted"]
    assert first["promotion"]["reason"].startswith("no champion yet; faces found in 0%")
    assert champion() == v1["version"]
    run1 = mlflow.get_run(first["mlflow_run_id"])
    assert run1.data.tags["e4t.promotion"] == "promoted"
    assert run1.data.tags["e4t.model_version"] == v1["version"]
    history = client.get_metric_history(run1.info.run_id, "e4t.clip_i")
    assert sorted(m.step for m in history) == [0, 2]  # metric vs tuning budget
    listed = {a.path for a in client.list_artifacts(run1.info.run_id)}
    assert {"report.html", "results.json", "summary.md"} <= listed

    # a second version that must beat the champion by a margin it cannot reach: kept
    v2 = _register(tiny_dir, tmp_path, seed=2)
    assert v2["version"] != v1["version"]
    second = run("models:/e4t-evaltest@candidate", "eval-2", {"promotion.min_delta": 1000})
    assert not second["promotion"]["promoted"]
    assert "does not beat" in second["promotion"]["reason"]
    assert second["promotion"]["champion_run_id"] == first["mlflow_run_id"]
    assert champion() == v1["version"]
    assert mlflow.get_run(second["mlflow_run_id"]).data.tags["e4t.promotion"] == "kept"

    # the same version when any gain is enough: promoted, the alias moves
    third = run(v2["model_uri"], "eval-3", {"promotion.min_delta": -1000})
    assert third["promotion"]["promoted"] and third["promotion"]["previous"] == v1["version"]
    assert champion() == v2["version"]

    # comparable runs: the same metric names, the same eval key
    runs = [mlflow.get_run(r["mlflow_run_id"]) for r in (first, second, third)]
    assert len({frozenset(r.data.metrics) for r in runs}) == 1
    assert len({r.data.tags["e4t.eval_key"] for r in runs}) == 1
    assert "textual-inversion.identity" in runs[0].data.metrics


@pytest.mark.slow
def test_evaluate_fails_fast_on_bad_inputs(prefect_server: None, tmp_path: Path) -> None:
    from flows.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="no such folder"):
        evaluate(model_uri="models:/e4t-nothing@candidate", concepts_url=str(tmp_path / "nope"))
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.jpg").write_bytes(b"x")
    with pytest.raises(Exception, match="e4t-nothing"):
        evaluate(model_uri="models:/e4t-nothing@candidate", concepts_url=str(tmp_path / "faces"))
    with pytest.raises(Exception, match="invalid evaluate config"):
        evaluate(concepts_url=str(tmp_path / "faces"), overrides={"steps": [-1]})


@pytest.mark.slow
def test_evaluation_of_a_personalize_output_links_the_concept_runs(
    prefect_server: None, photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from e4t.tracking import tracking_uri
    from flows.evaluate import evaluate
    from flows.personalize_bulk import personalize_bulk

    images = tmp_path / "faces"
    images.mkdir()
    for name in ("obama.jpg", "biden.jpg"):
        shutil.copyfile(photos_dir / name, images / name)
    model = _register(tiny_dir, tmp_path, seed=3)
    personalized = personalize_bulk(
        images_url=str(images),
        model_uri=model["model_uri"],
        output_url=str(tmp_path / "concepts"),
        preset="tiny",
        steps=1,
    )
    out = evaluate(
        model_uri=model["model_uri"],
        concepts_url=str(tmp_path / "concepts"),
        output_url=str(tmp_path / "eval"),
        preset="tiny",
        prompts=["a photo of {}"],
        seeds=[0],
        steps=[0, 1],
        baselines=[],
        overrides={"promotion.enabled": False},
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [c["source"] for c in results["concepts"]] == [
        str(images / "biden.jpg"),
        str(images / "obama.jpg"),
    ]
    assert set(results["summary"]) == {"e4t"}
    assert out["promotion"]["reason"] == "promotion disabled"
    mlflow.set_tracking_uri(tracking_uri())
    tags = mlflow.get_run(out["mlflow_run_id"]).data.tags
    assert tags["e4t.personalize_run_id"] == personalized["mlflow_run_id"]
    children = mlflow.search_runs(
        experiment_names=["e4t-personalize"],
        filter_string=f"tags.`mlflow.parentRunId` = '{personalized['mlflow_run_id']}'",
        output_format="list",
    )
    assert sorted(tags["e4t.concept_run_ids"].split(",")) == sorted(c.info.run_id for c in children)
    assert len(children) == 2


@pytest.mark.slow
def test_evaluate_command(photos_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    folder = model.save_pretrained(tmp_path / "domain")
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    args = [
        sys.executable, "-m", "e4t.cli", "evaluate", str(images), "--model", str(folder),
        "--out", str(tmp_path / "eval"), "--preset", "tiny", "--tune-steps", "0", "1",
        "--seeds", "0", "--prompt", "a photo of {}", "--baselines", "--no-track",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {tmp_path / 'eval' / 'report.html'}" in done.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["summary"]) == {"e4t"} and set(results["summary"]["e4t"]) == {"0", "1"}
    assert "100%" in done.stderr  # the progress bar

    bad = subprocess.run(
        [*args[:4], str(tmp_path / "nowhere"), *args[5:]], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "no such folder" in bad.stderr


@pytest.mark.slow
def test_the_full_tuning_reference_runs_beside_e4t(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """e4t-full (the paper's per-concept tuning of the encoder + domain offsets) is scored at
    the same budgets; its artifact is the whole encoder + offsets; the domain model comes
    back unchanged."""
    from e4t.config import EvaluateConfig, ModelConfig, load_config
    from e4t.jobs import evaluate as job
    from e4t.models.e4t_model import E4TModel
    from e4t.tracking import cached_domain_model

    model = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}), seed=3
    )
    folder = model.save_pretrained(tmp_path / "domain")
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "biden.jpg", images / "biden.jpg")
    config = load_config(
        EvaluateConfig,
        "evaluate",
        "tiny",
        {"methods": ["e4t", "e4t-full"], "full_tune_lr": 1e-3, **CHEAP},
    )
    before = cached_domain_model(str(folder), "cpu").fingerprint()
    pinned = job.PinnedModel.pin(str(folder))
    request = job.EvaluateRequest(pinned, str(images), str(tmp_path / "eval"), config, track=False)
    out = job.run(request).to_json()
    summary = out["summary"]
    assert set(summary) == {"e4t", "e4t-full"} and set(summary["e4t-full"]) == {"0", "2"}
    full, batched = summary["e4t-full"]["2"], summary["e4t"]["2"]
    assert full["artifact_bytes"] > 4 * batched["artifact_bytes"]  # the whole domain model
    assert full["tune_seconds"] > summary["e4t-full"]["0"]["tune_seconds"]
    assert cached_domain_model(str(folder), "cpu").fingerprint() == before  # restored
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "e4t-full" in report


@pytest.mark.slow
def test_the_frozen_export_is_scored_beside_e4t(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """e4t-frozen scores the same tuned concepts as e4t, generated with one fixed v* (what a
    stock pipeline runs from the export); its artifact is the word + the LoRA."""
    from e4t.config import EvaluateConfig, ModelConfig, load_config
    from e4t.jobs import evaluate as job
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}), seed=3
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an encoder whose v* depends on (z_t, t): freezing changes it
        for p in model.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    folder = model.save_pretrained(tmp_path / "domain")
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "biden.jpg", images / "biden.jpg")
    config = load_config(
        EvaluateConfig, "evaluate", "tiny", {"methods": ["e4t-frozen", "e4t"], **CHEAP}
    )
    pinned = job.PinnedModel.pin(str(folder))
    request = job.EvaluateRequest(pinned, str(images), str(tmp_path / "eval"), config, track=False)
    out = job.run(request).to_json()
    summary = out["summary"]
    assert set(summary) == {"e4t", "e4t-frozen"}
    frozen, dynamic = summary["e4t-frozen"]["2"], summary["e4t"]["2"]
    assert 0 < frozen["artifact_bytes"] < dynamic["artifact_bytes"]  # no [CLS], no head
    assert frozen["tune_seconds"] >= dynamic["tune_seconds"]  # tuning + the freezing pass
    assert frozen["clip_i"] != dynamic["clip_i"]  # other images: v* no longer re-predicted
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "e4t-frozen" in report


def test_the_evaluation_uses_the_version_pinned_at_its_start(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """@candidate moves between the request (made at the entry) and the evaluation step:
    the step evaluates, reports and records the version the request pinned."""
    from e4t.jobs import evaluate as job
    from e4t.jobs.steps import InProcess

    first = _register(tiny_dir, tmp_path, seed=6)
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    request = job.request(
        "models:/e4t-evaltest@candidate", str(images), str(tmp_path / "eval"),
        preset="tiny", track=False, prompts=["a photo of {}"], seeds=[0], steps=[0],
        baselines=[],
    )  # fmt: skip
    assert request.model.version_uri == first["model_uri"]
    moved: list[dict[str, str]] = []

    class MovingTheAlias(InProcess):
        def call(self, step: Any, *args: Any) -> Any:
            if step is job.evaluate and not moved:
                moved.append(_register(tiny_dir, tmp_path, seed=7))  # moves @candidate
            return super().call(step, *args)

    out = job.run(request, MovingTheAlias())
    assert moved and moved[0]["version"] != first["version"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["meta"]["model_version"] == f"e4t-evaltest v{first['version']}"
    done = json.loads((tmp_path / "eval" / "done.json").read_text())
    assert done["model"] == ["e4t-evaltest", first["version"]]
    assert out.num_concepts == 1 and set(out.summary) == {"e4t"}


def test_two_concurrent_promotions_move_the_alias_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two evaluations of two versions decide at the same time that each beats the (absent)
    champion; compare-and-set lets one move @champion and the other sees it moved."""
    import threading

    from mlflow import MlflowClient

    from e4t.config import PromotionConfig
    from e4t.tracking import promotion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("e4t-castest")
    experiment = client.create_experiment("e4t-cas", artifact_location=str(tmp_path / "a"))
    versions = [
        client.create_model_version("e4t-castest", str(tmp_path / f"m{i}")).version
        for i in range(2)
    ]
    runs = [client.create_run(experiment).info.run_id for _ in versions]
    both_read = threading.Barrier(2)
    decide = promotion.decide_promotion

    def decide_together(*args: object) -> tuple[bool, str]:
        both_read.wait(timeout=30)  # both have read "no champion" before either moves it
        return decide(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(promotion, "decide_promotion", decide_together)
    results: dict[int, dict] = {}

    def evaluate(i: int) -> None:
        results[i] = promotion.promote_if_better(
            runs[i], ("e4t-castest", str(versions[i])), 0.9, PromotionConfig(), "k", "e4t-cas"
        )

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    promoted = [i for i in range(2) if results[i]["promoted"]]
    assert len(promoted) == 1, results
    loser = 1 - promoted[0]
    assert "moved" in results[loser]["reason"]
    holder = client.get_model_version_by_alias("e4t-castest", "champion").version
    assert str(holder) == str(versions[promoted[0]])
    assert client.get_run(runs[loser]).data.tags["e4t.promotion"] == "kept"


@pytest.mark.slow
def test_the_evaluations_frozen_concept_is_the_exports(tiny_dir: Path, tmp_path: Path) -> None:
    """e4t-frozen scores what export-concept writes: the same tuned concept, round-tripped
    through its stored dtype (fp16) and frozen by one function with one step count and seed,
    gives the same v* (bit-equal) and the same LoRA."""
    from safetensors.torch import load_file

    from e4t.config import ModelConfig
    from e4t.evaluation.evaluate import freeze_stored
    from e4t.export import export_concept
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}), seed=3
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a domain model whose v* depends on (z_t, t)
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    cls = torch.randn(2, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    bank = model.new_concepts(cls, rank=4, seeds=[0, 1])
    with torch.no_grad():  # two "tuned" concepts, in fp32 as tuning holds them
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    index = 1
    frozen = freeze_stored(model, bank, index, "fp16")  # what the evaluation scores
    scored_word = frozen.word.clone()
    scored_lora = {k: v for k, v in frozen.bank.tensors_of(0, torch.float16).items() if "." in k}
    model.detach_concepts()

    folder = tmp_path / "concepts" / "ada"
    bank.save(index, folder, model.concept_meta({"concept_id": "ada"}), "fp16")  # as bulk does
    info = export_concept(model, folder, tmp_path / "export")
    exported = load_file(str(Path(info["folder"]) / "learned_embeds.safetensors"))[info["token"]]
    assert exported.dtype == torch.float16 and info["dtype"] == "float16"
    assert torch.equal(exported, scored_word)
    lora = load_file(str(Path(info["folder"]) / "pytorch_lora_weights.safetensors"))
    for path in bank.paths:
        assert torch.equal(lora[f"unet.{path}.lora_A.weight"], scored_lora[f"delta.{path}.down"])
        assert torch.equal(lora[f"unet.{path}.lora_B.weight"], scored_lora[f"delta.{path}.up"])
    # what e4t-frozen scored before: the in-memory fp32 concept frozen along the
    # evaluation's 30 generation steps, a word the export never writes
    from e4t.generation import frozen_word_embedding

    single = model.attach_concepts(bank.subset(index))
    before = frozen_word_embedding(model, single.cls, 30, 0)
    model.detach_concepts()
    assert not torch.equal(before, exported.float())


def test_promotion_refuses_a_model_that_draws_no_faces() -> None:
    """Faces detected in fewer samples than promotion.min_face_rate: refused with the reason,
    whatever the metric says; allowed (min_face_rate=0): promoted, the reason says so."""
    refused = decide_promotion(0.9, None, "max", 0.0, face_rate=0.0, min_face_rate=0.5)
    assert refused[0] is False and "faces found in only 0%" in refused[1]
    assert "min_face_rate=0.5" in refused[1]
    assert not decide_promotion(0.9, 0.1, "max", 0.0, face_rate=0.49, min_face_rate=0.5)[0]
    no_input_face = decide_promotion(0.9, None, "max", 0.0, float("nan"), 0.5)
    assert no_input_face[0] is False and "no input had a detected face" in no_input_face[1]
    allowed = decide_promotion(0.9, None, "max", 0.0, face_rate=0.0, min_face_rate=0.0)
    assert allowed[0] is True
    assert allowed[1].startswith("no champion yet; faces found in 0% of the generated samples")
    # enough faces: the plain rule, nothing added
    assert decide_promotion(0.9, None, "max", 0.0, 0.75, 0.5) == (True, "no champion yet")
    assert not decide_promotion(0.4, 0.5, "max", 0.0, 1.0, 0.5)[0]


def _header_rows(page: str) -> list[list[str]]:
    """Each <thead> row's header cell texts."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Rows(HTMLParser):
        in_head = in_cell = False

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag == "thead":
                self.in_head = True
            elif tag == "tr" and self.in_head:
                rows.append([])
            elif tag == "th" and self.in_head:
                self.in_cell = True
                rows[-1].append("")

        def handle_endtag(self, tag: str) -> None:
            if tag == "thead":
                self.in_head = False
            elif tag == "th":
                self.in_cell = False

        def handle_data(self, data: str) -> None:
            if self.in_cell:
                rows[-1][-1] += data.strip()

    Rows().feed(page)
    return rows


def test_the_report_on_a_model_without_faces_says_so(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """The tiny model draws no faces: the report warns at the top that identity (and CLIP-T)
    mean nothing, links its MLflow run, states the promotion decision (refused under the
    default min_face_rate), and has no empty header row; the run holds that report."""
    import mlflow

    from e4t.config import EvaluateConfig, load_config
    from e4t.jobs import evaluate as job
    from e4t.tracking import tracking_uri

    version = _register(tiny_dir, tmp_path, seed=4)
    # a champion with no comparable evaluation (as earlier tests of this module leave one):
    # the face rate is decided first, whatever the champion
    champion = _register(tiny_dir, tmp_path, seed=5)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.MlflowClient().set_registered_model_alias(
        "e4t-evaltest", "champion", champion["version"]
    )
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    config = load_config(
        EvaluateConfig,
        "evaluate",
        "tiny",
        {
            "methods": ["e4t"],
            "prompts": ["a photo of {}"],
            "seeds": [0],
            "steps": [0],
            "promotion.min_face_rate": 0.5,
        },
    )
    pinned = job.PinnedModel.pin(version["model_uri"])
    out = job.run(
        job.EvaluateRequest(pinned, str(images), str(tmp_path / "eval"), config)
    ).to_json()

    decision = out["promotion"]
    assert decision["promoted"] is False and decision["face_rate"] == 0.0
    assert "faces found in only 0%" in decision["reason"]
    page = (tmp_path / "eval" / "report.html").read_text()
    warning = page.find("The face detector found a face in only 0 of 1 generated samples")
    assert 0 <= warning < page.find("<table")  # at the top, before any table
    assert "CLIP-T is 0 for every method" in page
    run_id = out["mlflow_run_id"]
    assert f"/runs/{run_id}" in page and "href=" in page
    assert "Promotion: not promoted" in page and "min_face_rate=0.5" in page
    headers = _header_rows(page)
    assert headers and all(any(cell for cell in row) for row in headers), headers
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "**Warning**: The face detector" in summary and run_id in summary
    assert "Promotion: not promoted" in summary

    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.get_run(run_id)
    assert run.data.tags["e4t.promotion"] == "kept"
    assert "faces found in only 0%" in run.data.tags["e4t.promotion.reason"]
    logged = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="report.html", dst_path=str(tmp_path / "logged")
    )
    assert Path(logged).read_text() == page  # the run holds the report that names it
