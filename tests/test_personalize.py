"""personalize-bulk under Prefect: faces personalized, bad inputs reported, reruns skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


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
    again = personalize_bulk(**kwargs)
    assert again["summary"]["num_skipped"] == 3
    assert (out / "concepts" / ids["obama"] / "concept.json").stat().st_mtime_ns == stamp


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
