"""personalize-bulk under Prefect: faces personalized, bad inputs reported, reruns skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def domain_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    return model.save_pretrained(tmp_path_factory.mktemp("domain") / "model")


@pytest.fixture(scope="module")
def concept_images(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concept-images")
    shutil.copyfile(photos_dir / "obama.jpg", root / "obama.jpg")
    shutil.copyfile(photos_dir / "biden.jpg", root / "biden.jpg")
    (root / "astro").mkdir()
    shutil.copyfile(photos_dir / "astronaut.png", root / "astro" / "portrait.png")
    (root / "astro" / "notes.txt").write_text("a second file of the same concept")
    shutil.copyfile(photos_dir / "chelsea.png", root / "cat.png")
    data = (photos_dir / "obama2.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (root / "concepts.csv").write_text(
        "concept_id,class_word,prompts\nbiden,face,a photo of {}|{} wearing a hat\n"
    )
    return root


@pytest.mark.slow
def test_personalize_bulk_flow(
    prefect_server: None, concept_images: Path, domain_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from e4t.tracking import tracking_uri
    from flows.personalize_bulk import personalize_bulk

    out = tmp_path / "concepts"
    kwargs = dict(
        images_url=str(concept_images),
        model_uri=str(domain_dir),
        output_url=str(out),
        preset="tiny",
        steps=3,
        concepts_per_pass=2,
    )
    result = personalize_bulk(**kwargs)
    rows = {
        json.loads(x)["name"]: json.loads(x)
        for x in (out / "results.jsonl").read_text().splitlines()
    }
    # nothing dropped: every person a row, and concepts.csv a (skipped) row of its own
    assert set(rows) == {"obama", "biden", "astro", "cat", "corrupt", "concepts.csv"}
    assert rows["concepts.csv"]["status"] == "skipped"
    assert {k for k, r in rows.items() if r["status"] == "done"} == {"obama", "biden", "astro"}
    assert rows["cat"]["reason"] == "no_face" and rows["corrupt"]["reason"] == "truncated"
    ids = {name: row["concept_id"] for name, row in rows.items()}
    for name in ("obama", "biden", "astro"):
        assert ids[name].startswith(f"{name}-")
        assert (out / "concepts" / ids[name] / "concept.safetensors").exists()
        assert rows[name]["artifact_bytes"] > 0 and rows[name]["steps"] == 3
    biden_previews = out / "previews" / ids["biden"]
    assert len(list(biden_previews.glob("*.png"))) == 2  # from concepts.csv
    assert "wearing_a_hat" in " ".join(p.name for p in biden_previews.iterdir())
    summary = result["summary"]
    assert summary["num_done"] == 3 and summary["num_rejected"] == 2
    assert summary["num_files"] == 7  # obama, biden, astro/×2, cat, corrupt, concepts.csv

    mlflow.set_tracking_uri(tracking_uri())
    parent = mlflow.get_run(result["mlflow_run_id"])
    assert parent.data.metrics["num_done"] == 3
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        output_format="list",
    )
    assert sorted(c.data.tags["e4t.concept_id"] for c in children) == sorted(
        ids[n] for n in ("astro", "biden", "obama")
    )
    client = mlflow.MlflowClient()
    for child in children:
        listed = {a.path for a in client.list_artifacts(child.info.run_id, "concept")}
        assert "concept/concept.safetensors" in listed
        assert client.list_artifacts(child.info.run_id, "previews")
        logged = client.get_logged_model(child.data.tags["e4t.concept_model_id"])
        assert logged.name == f"concept-{child.data.tags['e4t.concept_id']}"
        assert logged.source_run_id == child.info.run_id
        files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
        assert "concept.safetensors" in files

    stamp = (out / "concepts" / ids["obama"] / "concept.json").stat().st_mtime_ns
    runs_before = len(mlflow.search_runs([parent.info.experiment_id], output_format="list"))
    again = personalize_bulk(**kwargs)
    assert again["summary"]["num_skipped"] == 3
    assert (out / "concepts" / ids["obama"] / "concept.json").stat().st_mtime_ns == stamp
    # a rerun that tuned nothing logs no empty parent run: the first run stands for it
    assert again["mlflow_run_id"] == result["mlflow_run_id"]
    runs_after = len(mlflow.search_runs([parent.info.experiment_id], output_format="list"))
    assert runs_after == runs_before


@pytest.mark.slow
def test_unknown_model_fails_fast(
    prefect_server: None, concept_images: Path, tmp_path: Path
) -> None:
    from flows.personalize_bulk import personalize_bulk

    state = personalize_bulk(
        images_url=str(concept_images),
        model_uri=str(tmp_path / "nope"),
        output_url=str(tmp_path / "o"),
        return_state=True,
    )
    assert state.is_failed()
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_four_threads_give_the_concepts_of_one(
    prefect_server: None, concept_images: Path, domain_dir: Path, tmp_path: Path
) -> None:
    """Threads share the worker's one cached model: passes take turns on it (a lock), so
    the concepts are the same bytes as with one thread."""
    from flows.personalize_bulk import personalize_bulk

    outs = {}
    for workers in (1, 4):
        out = tmp_path / f"threads-{workers}"
        result = personalize_bulk(
            images_url=str(concept_images),
            model_uri=str(domain_dir),
            output_url=str(out),
            preset="tiny",
            steps=2,
            concepts_per_pass=1,
            task_runner="threads",
            max_workers=workers,
            track=False,
        )
        assert result["summary"]["num_done"] == 3 and result["summary"]["num_failed"] == 0
        outs[workers] = {
            p.parent.name: p.read_bytes() for p in out.glob("concepts/*/concept.safetensors")
        }
    assert len(outs[1]) == 3 and outs[1] == outs[4]


# ---------------------------------------------------------------- concepts.csv, untrusted
# Fast: listing opens no file but concepts.csv, so the images may be any bytes.


def _inbox(tmp_path: Path, csv_bytes: bytes | None) -> Path:
    root = tmp_path / "inbox"
    root.mkdir()
    (root / "biden.jpg").write_bytes(b"not decoded by the listing")
    (root / "obama.jpg").write_bytes(b"not decoded by the listing")
    if csv_bytes is not None:
        (root / "concepts.csv").write_bytes(csv_bytes)
    return root


def _rows_and_prompts(root: Path, **kwargs: int) -> tuple[dict, dict]:
    from e4t.data.concepts import list_concepts

    listing = list_concepts(str(root), **kwargs)
    return (
        {r["name"]: r for r in listing.others},
        {c.name: c.prompts for c in listing.concepts},
    )


def test_a_concepts_csv_with_a_bom_keeps_its_prompts(tmp_path: Path) -> None:
    # what a spreadsheet's "CSV UTF-8" writes: a BOM before the header
    text = "concept_id,class_word,prompts\r\nbiden,face,a photo of {}|{} in a hat\r\n"
    rows, prompts = _rows_and_prompts(_inbox(tmp_path, b"\xef\xbb\xbf" + text.encode()))
    assert prompts["biden"] == ["a photo of {}", "{} in a hat"]
    assert rows["concepts.csv"]["status"] == "skipped" and "cuts" not in rows["concepts.csv"]


def test_a_latin1_concepts_csv_is_a_row_with_its_reason_and_the_listing_goes_on(
    tmp_path: Path,
) -> None:
    from e4t.data.concepts import DEFAULT_PREVIEW_PROMPTS

    text = "concept_id,class_word,prompts\nbiden,face,a photo of {} in a café\n"
    rows, prompts = _rows_and_prompts(_inbox(tmp_path, text.encode("latin-1")))
    row = rows["concepts.csv"]
    assert row["reason"] == "control_file" and row["status"] == "rejected"
    assert "not UTF-8" in row["detail"] and "0xe9" in row["detail"]
    # the concepts are all there, with the default prompts
    assert prompts == {"biden": DEFAULT_PREVIEW_PROMPTS, "obama": DEFAULT_PREVIEW_PROMPTS}
    # with a BOM before the latin-1 bytes, the offset still names the bad byte
    data = b"\xef\xbb\xbf" + text.encode("latin-1")
    (tmp_path / "bom").mkdir()
    rows, _ = _rows_and_prompts(_inbox(tmp_path / "bom", data))
    at = data.index(b"\xe9")
    assert f"byte 0xe9 at offset {at}" in rows["concepts.csv"]["detail"], rows["concepts.csv"]


def test_a_200kb_prompts_field_is_cut_and_the_cut_recorded(tmp_path: Path) -> None:
    from e4t.data.concepts import MAX_FIELD_CHARS, MAX_PROMPT_CHARS

    huge = "x" * 200_000  # over csv's own 128 KiB field limit, which raised mid-listing
    text = f"concept_id,class_word,prompts\nbiden,face,a photo of {{}}|{huge}\nobama,face,hi {{}}\n"
    rows, prompts = _rows_and_prompts(_inbox(tmp_path, text.encode()))
    assert prompts["obama"] == ["hi {}"]  # the rows after the big one are read
    assert prompts["biden"][0] == "a photo of {}"
    assert len(prompts["biden"][1]) == MAX_PROMPT_CHARS
    cuts = rows["concepts.csv"]["cuts"]
    assert any(f"cut to {MAX_FIELD_CHARS}" in c and "'biden'" in c for c in cuts), cuts
    assert rows["concepts.csv"]["status"] == "skipped"


def test_prompts_per_concept_are_capped_by_the_config_and_the_cut_recorded(
    tmp_path: Path,
) -> None:
    from e4t.config import PersonalizeConfig
    from e4t.jobs.personalize import plan

    many = "|".join(f"prompt {i} of {{}}" for i in range(200))
    root = _inbox(tmp_path, f"concept_id,prompts\nbiden,{many}\n".encode())
    planned = plan(str(root), PersonalizeConfig(max_prompts_per_concept=3))
    (biden,) = [s for p in planned.passes for s in p if s.name == "biden"]
    assert biden.prompts == ["prompt 0 of {}", "prompt 1 of {}", "prompt 2 of {}"]
    (row,) = [r for r in planned.others if r["name"] == "concepts.csv"]
    assert any("200 prompts, the first 3 kept" in c for c in row["cuts"]), row
    # and the default cap holds without a config
    _, prompts = _rows_and_prompts(root)
    default = PersonalizeConfig().max_prompts_per_concept
    assert len(prompts["biden"]) == default < 200


def test_an_empty_concept_folder_gets_a_row(tmp_path: Path) -> None:
    root = _inbox(tmp_path, None)
    (root / "carol").mkdir()
    (root / "dave" / "nested").mkdir(parents=True)  # only folders: no file either
    (root / "erin").mkdir()
    (root / "erin" / "1.jpg").write_bytes(b"x")
    from e4t.data.concepts import list_concepts

    listing = list_concepts(str(root))
    rows = {r["name"]: r for r in listing.others}
    assert set(rows) == {"carol", "dave"}
    assert all(r["reason"] == "empty_folder" and r["status"] == "rejected" for r in rows.values())
    assert {c.name for c in listing.concepts} == {"biden", "obama", "erin"}
    assert listing.num_files == 5  # biden, obama, erin/1.jpg, and a row per empty folder


@pytest.mark.parametrize(
    "marker",
    [
        b'{"concept_id": "a", "tuning',
        b"[1, 2]",
        b"\xff\xfe{}",
        b'{"rank": "four"}',
        b"",
        b'{"domain_fingerprint": "f", "tuning_hash": "h", "result": [1]}',
    ],
    ids=["truncated", "list", "not-utf8", "rank-four", "empty", "result-list"],
)
def test_an_unreadable_concept_json_in_out_is_redone_not_a_crash(
    tmp_path: Path, marker: bytes
) -> None:
    from e4t.training.bulk import concept_url, finished_meta

    folder = Path(concept_url(str(tmp_path), "ada-1a2b"))
    folder.mkdir(parents=True)
    (folder / "concept.json").write_text(
        json.dumps({"domain_fingerprint": "f", "tuning_hash": "h", "result": {"steps": 3}})
    )
    assert finished_meta(str(tmp_path), "ada-1a2b", "f", "h") is not None  # a sound one: skip
    (folder / "concept.json").write_bytes(marker)
    assert finished_meta(str(tmp_path), "ada-1a2b", "f", "h") is None  # redo it


def test_a_concept_done_against_another_base_model_is_redone_not_skipped(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Equal encoder and offsets on another base (@champion moved to a model on another
    base) are another domain model: the job redoes the concept with the model it was given."""
    import torch

    from e4t.config import ModelConfig
    from e4t.models.architectures import init_model
    from e4t.models.e4t_model import E4TModel
    from e4t.training.bulk import concept_url, finished_meta

    def on(base: Path) -> E4TModel:
        return E4TModel.from_config(ModelConfig(base_model=str(base), encoder={"hidden_dim": 32}))

    before = on(tiny_dir)
    after = on(init_model(tmp_path / "tiny-seed1", arch="tiny", seed=1))
    after.encoder.load_state_dict(before.encoder.state_dict())
    after.offsets.load_state_dict(before.offsets.state_dict())
    extra = {"concept_id": "ada", "tuning_hash": "h", "result": {"steps": 3}}
    before.save_concept(
        concept_url(str(tmp_path / "out"), "ada"), torch.randn(1, 2, 32), "fp32", extra
    )
    assert finished_meta(str(tmp_path / "out"), "ada", before.fingerprint(), "h") is not None
    assert finished_meta(str(tmp_path / "out"), "ada", after.fingerprint(), "h") is None


def test_a_pass_refuses_a_model_copy_other_than_the_one_pinned(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """The fingerprint pinned at the job's start is checked against the copy each pass runs
    on (another worker loads its own): a different one tunes nothing and writes nothing."""
    from e4t.config import ModelConfig, PersonalizeConfig
    from e4t.data.concepts import list_concepts
    from e4t.models.e4t_model import E4TModel
    from e4t.training.bulk import personalize_pass

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    images = tmp_path / "images"
    images.mkdir()
    (images / "ada.jpg").write_bytes(b"not read: the pass stops first")
    specs = list_concepts(str(images), 1 << 20, 8).concepts
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="job pinned 0123"):
        personalize_pass(model, specs, str(out), PersonalizeConfig(), "m", "m/1", "0123")
    assert not out.exists()


# ---------------------------------------------------------------- the job's request
# Fast: the request is made from flat parameters; nothing is loaded until the job runs.


def test_the_cli_and_the_flow_make_one_request_through_the_jobs_flags(tmp_path: Path) -> None:
    """Every FLAGS name is a parameter of the flow and a dest of the CLI command, and the
    command's arguments make the request the flow's parameters make."""
    import inspect

    from e4t.cli import build_parser
    from e4t.cli.personalize import request_of
    from e4t.jobs import personalize as job
    from flows.personalize_bulk import personalize_bulk

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["personalize"]._actions}  # type: ignore[union-attr]
    params = inspect.signature(personalize_bulk.fn).parameters
    assert set(job.FLAGS) <= dests and set(job.FLAGS) <= set(params)
    assert job.FLAGS == {"steps": "tune.num_steps", "concepts_per_pass": "concepts_per_pass"}

    args = build_parser().parse_args(
        ["personalize", "imgs", "--model", "models:/e4t-faces@candidate", "--out", "o",
         "--preset", "tiny", "--set", "seed=5", "--tune-steps", "3", "--concepts-per-pass", "2",
         "--device", "cpu", "--no-track"]
    )  # fmt: skip
    from_cli = request_of(args)
    from_flow = job.request(
        "imgs", "o", "models:/e4t-faces@candidate", preset="tiny", overrides={"seed": 5},
        device="cpu", track=False, steps=3, concepts_per_pass=2,
    )  # fmt: skip
    assert from_cli == from_flow
    config = from_flow.config
    assert (config.tune.num_steps, config.concepts_per_pass, config.seed) == (3, 2, 5)
    assert from_flow.model.version_uri == ""  # pinned when the job starts, not here
    from e4t.config import PersonalizeConfig, load_config

    preset = load_config(PersonalizeConfig, "personalize", "tiny")
    assert job.request("imgs", "o", "m", preset="tiny", steps=None).config == preset

    with pytest.raises(TypeError, match="unknown parameters \\['tune_steps'\\]"):
        job.request("imgs", "o", "m", tune_steps=3)
    with pytest.raises(TypeError, match="a config, or a preset"):
        job.request("imgs", "o", "m", config, preset="tiny")


def test_a_pass_refuses_a_model_the_job_did_not_pin(tmp_path: Path) -> None:
    """tune_pass runs only on the version check_model pinned at the job's start: a request
    that was never pinned is refused before any model is loaded."""
    from e4t.config import PersonalizeConfig
    from e4t.jobs import personalize as job

    unpinned = job.request(str(tmp_path), str(tmp_path / "o"), "models:/e4t-x@candidate",
                           PersonalizeConfig())  # fmt: skip
    with pytest.raises(ValueError, match="pinned model"):
        job.tune_pass(unpinned, [])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tensor_bytes", [0, 1, 9_000, 9_990, 99_999_000])
def test_concept_json_records_the_size_it_makes(tensor_bytes: int) -> None:
    """concept.json is encoded once, with artifact_bytes = tensors + its own bytes (the
    digits of the size counted, also where they carry to one more digit)."""
    import json as json_

    from e4t.training.bulk import concept_json_bytes

    info = {"concept_id": "ada", "result": {"status": "done", "steps": 3}}
    encoded, size = concept_json_bytes(info, tensor_bytes)
    assert size == tensor_bytes + len(encoded)
    assert json_.loads(encoded)["result"] == {"status": "done", "steps": 3, "artifact_bytes": size}


@pytest.mark.slow  # a whole job in-process (~25 s with the model fixture)
def test_a_concept_json_is_written_once_whole_and_a_rerun_gives_its_row_back(
    domain_dir: Path, photos_dir: Path, tmp_path: Path
) -> None:
    """In-process: the pinned model (with its fingerprint) is what the concept records; the
    concept.json's result row is the results.jsonl row's, and its artifact_bytes is the
    concept folder's size on disk (concept.json included, so it was written with its
    bytes); a rerun skips the concept and returns the same row."""
    from e4t.jobs import personalize as job
    from e4t.training.bulk import ConceptResult

    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    request = job.request(
        str(images), str(tmp_path / "out"), str(domain_dir), preset="tiny",
        overrides={"preview_steps": 1}, track=False, steps=1,
    )  # fmt: skip
    passes: list[list[ConceptResult]] = []
    result = job.run(request, on_pass=passes.append)
    assert result.model.version_uri == str(domain_dir.resolve()) and result.model.fingerprint
    ((done,),) = passes
    assert isinstance(done, ConceptResult) and done.status == "done" and not done.skipped
    (row,) = result.rows
    assert row == done.to_row() and row["name"] == "obama" and row["files"] == ["obama.jpg"]
    folder = tmp_path / "out" / "concepts" / row["concept_id"]
    meta = json.loads((folder / "concept.json").read_text())
    on_disk = sum(p.stat().st_size for p in folder.iterdir())
    assert row["artifact_bytes"] == meta["result"]["artifact_bytes"] == on_disk
    assert meta["result"] == done.pass_row()
    assert meta["domain_fingerprint"] == result.model.fingerprint
    assert meta["model_version_uri"] == row["model_version_uri"] == result.model.version_uri
    (line,) = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert json.loads(line) == row

    again = job.run(request)
    assert again.summary["num_skipped"] == 1
    assert again.rows == [{**row, "skipped": True}]


@pytest.mark.slow
def test_a_pass_renders_its_concepts_previews_in_one_sampling_loop(
    domain_dir: Path, photos_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concepts sharing the config's prompts: one generate call renders both previews,
    and they are the images each concept gets in a pass of its own."""
    import numpy as np
    from PIL import Image

    import e4t.generation
    from e4t.jobs import personalize as job

    images = tmp_path / "images"
    images.mkdir()
    for name in ("obama.jpg", "biden.jpg"):
        shutil.copyfile(photos_dir / name, images / name)
    calls: list[int] = []
    real = e4t.generation.generate

    def counted(model: Any, cls: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(cls.shape[0]))
        return real(model, cls, *args, **kwargs)

    monkeypatch.setattr(e4t.generation, "generate", counted)

    def previews(per_pass: int) -> dict[str, list[np.ndarray]]:
        out = tmp_path / f"out{per_pass}"
        request = job.request(
            str(images), str(out), str(domain_dir), preset="tiny", track=False, steps=1,
            concepts_per_pass=per_pass, overrides={"preview_steps": 2},
        )  # fmt: skip
        assert job.run(request).summary["num_done"] == 2
        return {
            folder.name: [np.asarray(Image.open(p), dtype=np.float32)
                          for p in sorted(folder.glob("*.png"))]
            for folder in sorted((out / "previews").iterdir())
        }  # fmt: skip

    together = previews(2)
    assert calls == [2]  # both concepts in one sampling loop
    calls.clear()
    alone = previews(1)
    assert calls == [1, 1]
    assert together.keys() == alone.keys() and len(together) == 2
    for concept, pngs in together.items():
        assert len(pngs) == len(alone[concept]) >= 1
        for a, b in zip(pngs, alone[concept], strict=True):
            # the same images up to the bank-vs-alone tuning tolerance (test_tune)
            assert np.abs(a - b).mean() < 2.0, concept
