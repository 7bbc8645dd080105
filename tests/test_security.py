"""The deployed shape leaks nothing and opens no door: the image's build context, the
stack's secret files, the cluster templates, the pyfunc's inputs."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"


# --------------------------------------------------------------------------- build context


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """Docker's .dockerignore rules as (exclude?, regex): comments and blanks dropped, each
    pattern cleaned like Go's filepath.Clean (no leading or trailing /), ``**`` spanning
    folders, ``*`` and ``?`` within one, ``!`` making an exception."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(f"^{regex}$")))
    return rules


def build_context(root: Path) -> list[str]:
    """The files ``docker build`` sends: a path is left out when the last rule matching it,
    or one of its parent folders, excludes it (moby's patternmatcher)."""
    ignore = root / ".dockerignore"
    rules = dockerignore_rules(ignore.read_text()) if ignore.exists() else []

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for exclude, regex in rules:
            if any(regex.match(c) for c in candidates):
                verdict = exclude
        return verdict

    sent = []
    for folder, _dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        for name in files:
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if not excluded(rel):
                sent.append(rel)
    return sorted(sent)


SECRET_LIKE = re.compile(
    r"(^|/)(\.stack|\.venv|\.git)(/|$)|^(data|mlruns|tests/artifacts)/"
    r"|\.(db|sqlite3?|env|pem|key)$|(^|/)credentials[^/]*\.json$"
)


def test_the_build_context_holds_no_secret_database_or_virtualenv(tmp_path: Path) -> None:
    """A tree like a used checkout (the stack's keys, data, a database, the host's .venv,
    test artifacts, .git): none of it is sent, the sources are."""
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    leaks = [
        ".stack/credentials.json",
        ".stack/stack.env",
        ".stack/mlflow/mlflow.db",
        ".stack/s3/objects/e4t/photos/a.jpg",
        "data/demo/photos/obama.jpg",
        "data/mlflow.db",
        "somewhere/deep/runs.db",
        "mlruns/0/meta.yaml",
        ".venv/bin/python",
        ".venv/.installed",
        "tests/artifacts/report.png",
        ".git/config",
        "prod.env",
        ".env",
        "infra/tls/client-key.pem",
        "e4t/__pycache__/cli.cpython-311.pyc",
    ]
    sources = [
        "e4t/cli/__init__.py",
        "flows/pipeline.py",
        "Makefile",
        "pyproject.toml",
        "configs/model/sd15.yaml",
        "infra/docker/Dockerfile",
        "infra/k8s/dask-cluster.yaml",
        "tests/test_models.py",
        "README.md",
    ]
    for rel in leaks + sources:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    sent = build_context(tmp_path)
    assert not [rel for rel in leaks if rel in sent]
    assert [rel for rel in sources if rel not in sent] == []
    # and the checkout this test runs in (its .venv, .git, maybe .stack/ and data/)
    real = build_context(ROOT)
    assert "e4t/cli/__init__.py" in real and "Makefile" in real
    assert [rel for rel in real if SECRET_LIKE.search(rel)] == []


def test_the_matcher_follows_dockers_rules() -> None:
    rules = dockerignore_rules("*.db\n**/*.log\nbuild/\n!build/keep.txt\n")
    matching = {
        "a.db": True,
        "sub/a.db": False,  # `*` stays in the root folder
        "x/y/z.log": True,
        "build": True,
        "build/keep.txt": False,  # the later exception wins
    }
    for path, want in matching.items():
        verdict = False
        for exclude, regex in rules:
            if regex.match(path):
                verdict = exclude
        assert verdict is want, path


def test_the_image_runs_as_a_user_from_a_pinned_base_and_installs_cuda_torch() -> None:
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    lines = [
        line for line in dockerfile.replace("\\\n", " ").splitlines() if not line.startswith("#")
    ]
    base = next(line for line in lines if line.startswith("FROM "))
    assert re.match(r"FROM python:\d+\.\d+\.\d+-\S+|FROM \S+@sha256:[0-9a-f]{64}", base), base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    user_at = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    install_at = next(i for i, line in enumerate(lines) if "make install" in line)
    assert user_at < install_at  # installed and run as the user
    install = lines[install_at]
    assert install.index("rm -rf .venv") < install.index("make install")  # no stale stamp
    assert "whl/cu128" in install and "torch.version.cuda" in install
    assert "COPY --chown=" in dockerfile


def test_secret_files_are_private_and_never_committed_or_built(tmp_path: Path) -> None:
    from infra.stack import _credentials, write_env_file

    creds = _credentials(tmp_path)
    assert set(creds) == {"access_key", "secret_key", "prefect_password", "mlflow_password"}
    env = tmp_path / "stack.env"
    env.write_text("stale")
    os.chmod(env, 0o644)  # a wider mode left by someone: rewritten private
    write_env_file(env, {"AWS_SECRET_ACCESS_KEY": creds["secret_key"]})
    for path in (tmp_path / "credentials.json", env):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert creds["secret_key"] in env.read_text()
    for ignore in (".gitignore", ".dockerignore"):
        lines = (ROOT / ignore).read_text().splitlines()
        assert ".stack/" in lines, ignore


def _wider_than_owner(root: Path) -> list[str]:
    """Every file or folder under root that its group or others could read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            found.append(f"{path} {oct(stat.S_IMODE(path.stat().st_mode))}")
    return found


def test_a_service_writes_owner_only_files_whatever_the_umask(tmp_path: Path) -> None:
    """A background service (here a shell writing data, a database-like file and a folder)
    leaves nothing group- or world-readable, though the caller's umask is 002; a tree made
    before with wide modes is locked down by make_private."""
    from infra.processes import make_private, start_background

    old = os.umask(0o002)
    try:
        root = tmp_path / "svc"
        script = f"mkdir -p {root}/data/sub && echo face > {root}/data/sub/photo.dat && echo ok"
        proc = start_background(["sh", "-c", script], dict(os.environ), root, "svc")
        _, status = os.waitpid(proc.pid, 0)  # our child: wait for it to end
        assert os.waitstatus_to_exitcode(status) == 0
        assert (root / "data" / "sub" / "photo.dat").read_text() == "face\n"
        assert _wider_than_owner(root) == []
        old_tree = tmp_path / "old"
        (old_tree / "s3" / "data").mkdir(parents=True)
        (old_tree / "s3" / "data" / "1.dat").write_text("face")
        os.chmod(old_tree / "s3" / "data" / "1.dat", 0o644)
        tool = old_tree / "run.sh"
        tool.write_text("#!/bin/sh\n")
        os.chmod(tool, 0o755)
        assert _wider_than_owner(old_tree)
        make_private(old_tree)
        assert _wider_than_owner(old_tree) == []
        assert stat.S_IMODE(tool.stat().st_mode) == 0o700  # still executable by its owner
        # stack down locks down what a service wrote wide on its own (SeaweedFS's .vif)
        from infra.stack import down

        stack = tmp_path / "stack"
        (stack / "s3" / "data").mkdir(parents=True)
        vif = stack / "s3" / "data" / "e4t_1.vif"
        vif.write_text("{}")
        os.chmod(vif, 0o644)
        down(stack)
        assert _wider_than_owner(stack) == []
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- cluster


def _pod_specs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod metadata, pod spec) of every pod template in infra/k8s."""
    from prefect.utilities.templating import apply_values

    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Job", "Deployment"):
                template = doc["spec"]["template"]
                found.append(
                    (
                        f"{path.name}:{doc['metadata']['name']}",
                        template.get("metadata", {}),
                        template["spec"],
                    )
                )
    pool = json.loads((K8S / "work-pool-gpu.json").read_text())
    values = {k: v.get("default") for k, v in pool["variables"]["properties"].items()}
    rendered = apply_values(pool["job_configuration"], {**values, "command": "x"})
    template = rendered["job_manifest"]["spec"]["template"]
    found.append(("work-pool-gpu.json", template.get("metadata", {}), template["spec"]))
    return found


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    pods = _pod_specs()
    assert len(pods) >= 4  # pretraining Job, Dask scheduler and workers, the work pool
    for where, _, spec in pods:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        mounts_needed = {"/tmp"}
        for container in spec["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert mounts_needed <= mounted, f"{where}: a read-only root needs /tmp mounted"


def _policies() -> list[dict[str, Any]]:
    return [
        d
        for d in yaml.safe_load_all((K8S / "network-policy.yaml").read_text())
        if d and d["kind"] == "NetworkPolicy"
    ]


def test_network_policies_admit_only_the_jobs_own_pods() -> None:
    pods = {where: meta.get("labels", {}) for where, meta, _ in _pod_specs()}
    policies = _policies()

    def selected(labels: dict[str, str], selector: dict[str, Any]) -> bool:
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    pretrain = pods["pretrain-multinode.yaml:e4t-pretrain"]
    scheduler = pods["dask-cluster.yaml:e4t-dask-scheduler"]
    worker = pods["dask-cluster.yaml:e4t-dask-worker"]
    client = pods["work-pool-gpu.json"]
    for labels, allowed, denied in (
        (pretrain, [pretrain], [scheduler, worker, client, {"app": "e4t"}]),
        (scheduler, [worker, client], [pretrain, {"app": "e4t"}, {}]),
        (worker, [scheduler, worker], [client, pretrain, {}]),
    ):
        covering = [p for p in policies if selected(labels, p["spec"]["podSelector"])]
        assert covering, f"no policy selects {labels}"
        for policy in covering:
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            sources = [s for rule in policy["spec"]["ingress"] for s in rule["from"]]
            assert all(set(s) == {"podSelector"} for s in sources)  # no ipBlock, no namespace
        sources = [
            s["podSelector"]
            for p in covering
            for rule in p["spec"]["ingress"]
            for s in rule["from"]
        ]
        assert all(any(selected(a, s) for s in sources) for a in allowed), labels
        assert not any(any(selected(d, s) for s in sources) for d in denied), labels
    ports = [p for p in policies if selected(scheduler, p["spec"]["podSelector"])]
    assert {port["port"] for p in ports for r in p["spec"]["ingress"] for port in r["ports"]} == {
        8786
    }


def test_the_dask_cluster_speaks_tls_on_the_pod_network() -> None:
    guide = (K8S / "dask-personalize.md").read_text()
    cluster = (K8S / "dask-cluster.yaml").read_text()
    for text in (guide, cluster):
        assert not re.search(r"--host\s+0\.0\.0\.0", text)
        assert "tcp://" not in text
    assert "openssl req" in guide and "tls://e4t-dask-scheduler:8786" in guide
    assert "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True" in guide
    docs = [d for d in yaml.safe_load_all(cluster) if d and d["kind"] == "Deployment"]
    for doc in docs:
        args = " ".join(doc["spec"]["template"]["spec"]["containers"][0]["args"])
        assert "--host $POD_IP" in args and "--tls-ca-file" in args and "--tls-key" in args
    scheduler = next(d for d in docs if d["metadata"]["name"] == "e4t-dask-scheduler")
    assert "--protocol tls" in " ".join(
        scheduler["spec"]["template"]["spec"]["containers"][0]["args"]
    )


# --------------------------------------------------------------------------- the pyfunc


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_pyfunc_reads_no_file_outside_its_root_and_decodes_within_the_caps(
    tmp_path: Path,
) -> None:
    from e4t.config import DecodeConfig
    from e4t.mlflow_model import PredictInputError, load_image

    root = tmp_path / "served"
    root.mkdir()
    (root / "me.png").write_bytes(_png())
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    (root / "link.png").symlink_to(outside)
    caps = DecodeConfig()
    assert load_image(base64.b64encode(_png()).decode(), root, caps).size == (8, 8)
    assert load_image("me.png", root, caps).size == (8, 8)
    assert load_image(str(root / "me.png"), root, caps).size == (8, 8)
    for source in (str(outside), "../secret.png", "link.png", "/etc/passwd"):
        with pytest.raises(PredictInputError, match="outside the allowed root"):
            load_image(source, root, caps)
    with pytest.raises(PredictInputError, match="too_large"):
        load_image("me.png", root, DecodeConfig(max_bytes=10))
    with pytest.raises(PredictInputError, match="decompression_bomb"):
        load_image(base64.b64encode(_png(64)).decode(), root, DecodeConfig(max_pixels=100))
    with pytest.raises(PredictInputError, match="no such file"):
        load_image("missing.png", root, caps)
    readme = (ROOT / "README.md").read_text()
    assert "write access to the MLflow artifact store is code execution" in readme
