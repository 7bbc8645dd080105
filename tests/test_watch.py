"""The folder watcher: READY batches only, each exactly once — across restarts, a kill between
trigger and state write, two watchers on one folder and API outages — and new objects on S3
seen at once. The real Prefect server (ephemeral) and SeaweedFS where it matters."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.watch import Lease, batch_key, scan_once, watch


def test_ready_batches_are_triggered_once(tmp_path: Path) -> None:
    calls: list[tuple[dict, str]] = []

    def trigger(parameters: dict, key: str) -> str:
        calls.append((parameters, key))
        return f"run-{len(calls)}"

    inbox = tmp_path / "inbox"
    (inbox / "b1").mkdir(parents=True)
    (inbox / "b2").mkdir()
    (inbox / "b1" / "READY").write_text("")
    assert scan_once(str(inbox), str(tmp_path / "out"), "models:/e4t-faces@champion", trigger) == [
        "b1"
    ]
    assert calls[0] == (
        {
            "images_url": str(inbox / "b1"),
            "output_url": str(tmp_path / "out/b1"),
            "model_uri": "models:/e4t-faces@champion",
        },
        batch_key(str(inbox), "b1"),
    )
    # a restart sees the state file: nothing twice; b2 becomes ready later
    assert scan_once(str(inbox), str(tmp_path / "out"), "m", trigger) == []
    (inbox / "b2" / "READY").write_text("")
    assert scan_once(str(inbox), str(tmp_path / "out"), "m", trigger) == ["b2"]
    assert len(calls) == 2
    assert batch_key(str(inbox), "b2") != batch_key(str(inbox), "b1")
    assert batch_key(str(inbox) + "/", "b1") == batch_key(str(inbox), "b1")


def test_the_lease_admits_one_watcher_and_passes_on_when_it_expires(tmp_path: Path) -> None:
    a = Lease(str(tmp_path), ttl_s=60, owner="a")
    b = Lease(str(tmp_path), ttl_s=60, owner="b")
    assert a.acquire() and not b.acquire()
    assert a.acquire()  # renewed by its holder
    a.release()
    assert b.acquire() and not a.acquire()
    short = Lease(str(tmp_path / "x"), ttl_s=-1, owner="gone")  # a holder that died
    (tmp_path / "x").mkdir()
    assert short.acquire()
    assert Lease(str(tmp_path / "x"), ttl_s=60, owner="next").acquire()  # taken over


@pytest.fixture
def deployment(prefect_server: None) -> str:
    """personalize-bulk registered on the ephemeral server (no worker: runs stay scheduled)."""
    from flows.personalize_bulk import personalize_bulk

    personalize_bulk.to_deployment(name="watch-test").apply()
    return "personalize-bulk/watch-test"


def _runs_of(images_url: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return [r for r in runs if r.parameters.get("images_url") == images_url]


def _upload_batch(name: str, inbox: str, photo: bytes) -> None:
    """Another uploader (its own S3 client): the images first, READY last."""
    import s3fs

    from e4t import io as eio

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **eio.s3_storage_options())
    bucket_path = inbox.removeprefix("s3://")
    fs.pipe(f"{bucket_path}/{name}/face.jpg", photo)
    fs.pipe(f"{bucket_path}/{name}/READY", b"")


@pytest.mark.slow
def test_each_batch_starts_one_run_on_the_real_server_and_s3(
    deployment: str, s3_env: dict[str, str], photos_dir: Path
) -> None:
    import s3fs

    from e4t import io as eio
    from flows.watch import deployment_trigger

    s3fs.S3FileSystem(**eio.s3_storage_options()).mkdir("inbox")
    inbox, out = "s3://inbox/faces", "s3://inbox-out"
    photo = (photos_dir / "obama.jpg").read_bytes()
    trigger = deployment_trigger(deployment)

    # 1. killed between starting the run and writing the state: the restart's trigger
    #    carries the same idempotency key, and the server returns the run it already made
    _upload_batch("b1", inbox, photo)

    def killed_after_trigger(parameters: dict, key: str) -> str:
        trigger(parameters, key)
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        scan_once(inbox, out, "models:/e4t-faces@champion", killed_after_trigger)
    assert not eio.exists(eio.join(inbox, ".e4t-watch.json"))
    assert scan_once(inbox, out, "models:/e4t-faces@champion", trigger) == ["b1"]
    assert len(_runs_of(f"{inbox}/b1")) == 1

    # 2. a batch uploaded by someone else after this process listed the prefix is seen
    assert scan_once(inbox, out, "m", trigger) == []
    _upload_batch("b2", inbox, photo)
    assert scan_once(inbox, out, "m", trigger) == ["b2"]

    # 3. two watchers on one folder: one holds the lease, the other stands by
    _upload_batch("b3", inbox, photo)
    started: list[str] = []
    barrier = threading.Barrier(2)

    def run_watcher(owner: str) -> None:
        barrier.wait(timeout=30)
        watch(inbox, out, "m", trigger, interval_s=0.01, max_scans=2,
              lease=Lease(inbox, ttl_s=60, owner=owner), on_started=started.append,
              sleep=lambda s: None)  # fmt: skip

    threads = [threading.Thread(target=run_watcher, args=(o,)) for o in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert started == ["b3"]
    assert len(_runs_of(f"{inbox}/b3")) == 1

    # 4. the API fails once: the watcher backs off, goes on, and starts the batch
    _upload_batch("b4", inbox, photo)
    calls = {"n": 0}

    def outage_then_up(parameters: dict, key: str) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("Prefect API unreachable")
        return trigger(parameters, key)

    waits: list[float] = []
    failures = watch(inbox, out, "m", outage_then_up, interval_s=5, max_scans=3,
                     on_started=started.append, sleep=waits.append)  # fmt: skip
    assert failures == 1 and started[-1] == "b4"
    assert waits == [10, 5]  # doubled after the failure, back to the interval after
    assert len(_runs_of(f"{inbox}/b4")) == 1


def test_a_failed_batch_is_retried_with_a_new_key_until_its_attempts_run_out(
    tmp_path: Path,
) -> None:
    """A run that failed or crashed is started again on the next scan under a new attempt
    key, up to max_attempts; completed, running and cancelled runs never; --retry gives a
    batch another round. (The key logic; the real server below.)"""
    from flows.watch import attempt_key, request_retry

    runs: dict[str, str] = {}  # run id → state
    keys: dict[str, str] = {}  # idempotency key → run id, as the server keeps them

    def trigger(parameters: dict, key: str) -> str:
        if key not in keys:
            keys[key] = f"run-{len(keys) + 1}"
            runs[keys[key]] = "SCHEDULED"
        return keys[key]

    inbox, out = tmp_path / "inbox", str(tmp_path / "out")
    for name in ("ok", "bad", "stopped"):
        (inbox / name).mkdir(parents=True)
        (inbox / name / "READY").write_text("")

    def scan() -> list[str]:
        return scan_once(str(inbox), out, "m", trigger, state_of=runs.get, max_attempts=2)

    assert scan() == ["bad", "ok", "stopped"]
    runs["run-1"], runs["run-2"], runs["run-3"] = "FAILED", "COMPLETED", "CANCELLED"
    assert scan() == ["bad"]  # only the failed one, under its second key
    assert keys[attempt_key(str(inbox), "bad", 0, 2)] == "run-4"
    assert scan() == []  # running now: nothing twice
    runs["run-4"] = "CRASHED"
    assert scan() == [] and len(keys) == 4  # two attempts were all it had

    state = json.loads((inbox / ".e4t-watch.json").read_text())
    assert state["batches"]["bad"]["gave_up"] is True
    assert [a["flow_run_id"] for a in state["batches"]["bad"]["attempts"]] == ["run-1", "run-4"]
    request_retry(str(inbox), "bad")  # by hand: another round
    assert scan() == ["bad"] and len(keys) == 5
    assert keys[attempt_key(str(inbox), "bad", 1, 1)] == "run-5"
    # the state file lost: the keys hand back the runs the server has; none is reported as
    # started, nothing new starts, and the failed batch is recorded as out of attempts
    (inbox / ".e4t-watch.json").unlink()
    assert scan() == [] and len(keys) == 5
    state = json.loads((inbox / ".e4t-watch.json").read_text())
    assert state["batches"]["bad"]["gave_up"] is True
    assert state["batches"]["ok"]["flow_run_id"] == "run-2"


def test_the_watcher_refuses_a_model_that_does_not_exist_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's default, models:/e4t-faces@champion, before any evaluation promoted one:
    one clear line and exit 2, no state written, nothing triggered; a scan whose check fails
    starts nothing and does not use the batch up."""
    from flows.watch import WatchError, check_targets, main

    inbox = tmp_path / "inbox"
    (inbox / "b1").mkdir(parents=True)
    (inbox / "b1" / "READY").write_text("")
    code = main([str(inbox), "--out-root", str(tmp_path / "out"), "--once",
                 "--model-uri", "models:/e4t-never-registered@champion"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --model-uri models:/e4t-never-registered@champion")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (inbox / ".e4t-watch.json").exists()
    with pytest.raises(WatchError, match="no E4T domain model"):
        check_targets(str(tmp_path / "no-model"), str(tmp_path / "out"))

    calls: list[str] = []

    def refuse() -> None:
        raise WatchError("--model-uri m: no such model")

    with pytest.raises(WatchError):
        scan_once(str(inbox), str(tmp_path / "out"), "m", lambda p, k: calls.append(k) or "r",
                  check=refuse)  # fmt: skip
    assert calls == [] and not (inbox / ".e4t-watch.json").exists()
    assert scan_once(str(inbox), str(tmp_path / "out"), "m", lambda p, k: "r-1") == ["b1"]


@pytest.mark.slow
def test_a_failed_run_is_retried_on_the_real_server(deployment: str, tmp_path: Path) -> None:
    """On the real Prefect server: the batch's run fails → the next scan starts a second run
    (a new key); a completed run is never started again; the attempts are recorded."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    from flows.watch import deployment_states, deployment_trigger

    inbox, out = tmp_path / "inbox", str(tmp_path / "out")
    for name in ("b1", "b2"):
        (inbox / name).mkdir(parents=True)
        (inbox / name / "READY").write_text("")
    trigger, states = deployment_trigger(deployment), deployment_states()

    def scan() -> list[str]:
        return scan_once(str(inbox), out, "m", trigger, state_of=states, max_attempts=3)

    def set_state(images_url: str, state: Any) -> None:
        (run,) = [r for r in _runs_of(images_url) if r.state_type.value == "SCHEDULED"]
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(str(run.id)), state, force=True)

    assert scan() == ["b1", "b2"]
    set_state(str(inbox / "b1"), Failed(message="boom"))
    set_state(str(inbox / "b2"), Completed())
    assert scan() == ["b1"]
    runs = _runs_of(str(inbox / "b1"))
    assert sorted(r.state_type.value for r in runs) == ["FAILED", "SCHEDULED"]
    assert len(_runs_of(str(inbox / "b2"))) == 1
    assert scan() == []  # the second run is scheduled: never twice
    state = json.loads((inbox / ".e4t-watch.json").read_text())
    assert [a["attempt"] for a in state["batches"]["b1"]["attempts"]] == [1, 2]


@pytest.mark.slow
def test_the_watcher_prints_its_runs_not_every_http_request(
    deployment: str,
    tiny_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One --once scan against the real Prefect server: the started batch is printed, the
    Prefect client's httpx "HTTP Request" lines are not logged."""
    import logging

    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel
    from flows.watch import main

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    folder = model.save_pretrained(tmp_path / "domain")
    inbox = tmp_path / "inbox"
    (inbox / "b1").mkdir(parents=True)
    (inbox / "b1" / "READY").write_text("")
    caplog.set_level(logging.INFO)  # what the watcher's basicConfig(level=INFO) shows
    try:
        code = main([str(inbox), "--out-root", str(tmp_path / "out"), "--once",
                     "--model-uri", str(folder), "--deployment", deployment])  # fmt: skip
        logged = [(r.name, r.getMessage()) for r in caplog.records]
    finally:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert code == 0
    assert f"started {deployment} for batch b1" in capsys.readouterr().out
    assert any("batch b1 → flow run" in message for _, message in logged)
    assert len(_runs_of(str(inbox / "b1"))) == 1  # requests were made, and went through
    assert [m for name, m in logged if name.startswith(("httpx", "httpcore"))] == []
