"""The GPU-cluster files, validated as far as this machine allows: they parse, templates
render, commands are ones our CLI accepts, and the Dockerfile installs as the README says."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def test_dockerfile_installs_as_the_readme_says() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M)
    assert python, "the image starts from a Python base"
    low, high = re.search(
        r'requires-python = ">=(\S+),<(\S+)"', (ROOT / "pyproject.toml").read_text()
    ).groups()
    assert (
        tuple(map(int, low.split(".")))
        <= tuple(map(int, python.group(1).split(".")))
        < tuple(map(int, high.split(".")))
    )
    installs = re.findall(r"(make install TORCH_INDEX=\S+)", dockerfile)
    assert installs and all(cmd in readme for cmd in installs)
    assert "whl/cu128" in installs[0] and "whl/cu128" in (ROOT / "Makefile").read_text()
    assert "infra/docker/Dockerfile" in readme


def test_gpu_work_pool_template_renders_with_gpu_requests() -> None:
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads((INFRA / "k8s" / "work-pool-gpu.json").read_text())
    variables = template["variables"]["properties"]
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= set(variables), f"undeclared placeholders: {used - set(variables)}"
    values = {name: spec.get("default") for name, spec in variables.items()}
    values.update(command="prefect flow-run execute", gpu_count=2)
    rendered = apply_values(template["job_configuration"], values)
    assert "{{" not in json.dumps(rendered)
    container = rendered["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["image"] == variables["image"]["default"]
    assert container["envFrom"][0]["secretRef"]["name"] == "e4t-credentials"
    assert not any("SECRET" in k or "KEY" in k for k in json.dumps(values).split('"'))


def test_multinode_pretraining_job_runs_our_cli_consistently() -> None:
    from e4t.cli import build_parser

    docs = list(yaml.safe_load_all((INFRA / "k8s" / "pretrain-multinode.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert (
        pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    )
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["NNODES"]) == spec["completions"]
    command = container["args"][0].replace("$NNODES", env["NNODES"])
    command = command.replace("$JOB_COMPLETION_INDEX", "0")
    argv = shlex.split(command)
    assert argv[:2] == ["exec", "e4t"]
    args = build_parser().parse_args(argv[2:])  # a command our CLI accepts
    assert args.command == "pretrain" and args.nnodes == spec["completions"]
    assert args.rdzv_endpoint == f"{job['metadata']['name']}-0.{service['metadata']['name']}:29400"
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert args.nproc_per_node == gpus
    assert (ROOT / "configs" / "pretrain" / f"{args.preset}.yaml").exists()


def test_infra_readme_names_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in (
        "docker/Dockerfile",
        "k8s/work-pool-gpu.json",
        "k8s/pretrain-multinode.yaml",
        "k8s/dask-cluster.yaml",
        "k8s/network-policy.yaml",
        "k8s/dask-personalize.md",
    ):
        assert path in readme
