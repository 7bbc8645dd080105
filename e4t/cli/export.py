"""``e4t export-concept``: a concept for stock diffusers (textual inversion + LoRA)."""

from __future__ import annotations

import argparse

from e4t.cli.common import add_allow_model_mismatch, checked_model, printable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export-concept",
        help="a concept for stock diffusers: textual-inversion embedding + LoRA (+ the base)",
        description="Write OUT/<concept>/ (learned_embeds.safetensors: the frozen v*; "
        "pytorch_lora_weights.safetensors: the deltas) and, once per domain model, "
        "OUT/base-<fingerprint>/ (a diffusers folder, UNet with the domain offsets folded in).",
    )
    p.add_argument(
        "concept",
        help="a concept folder or URL, e.g. s3://BUCKET/OUT/concepts/ID "
        "(concept.json + concept.safetensors)",
    )
    p.add_argument("--model", required=True, help="its domain model: models:/... or a folder")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument(
        "--sample-steps",
        type=int,
        default=20,  # generation.FROZEN_STEPS (not imported: a fast --help)
        help="steps of the trajectory v* is averaged on (20: what the evaluation's "
        "e4t-frozen method scores; another count exports something it did not score)",
    )
    p.add_argument("--device", default="cpu")
    add_allow_model_mismatch(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e4t.export import export_concept
    from e4t.generation import check_concept_url, model_provenance
    from e4t.tracking import load_domain_model

    check_concept_url(args.concept)  # before the model: a typo costs no download
    pinned = checked_model(args.model)
    model = load_domain_model(pinned, device=args.device)
    origin = model_provenance(args.model, model.fingerprint(), pinned)
    recorded = {k: origin[k] for k in ("model_uri", "model_version_uri")}
    info = export_concept(
        model,
        args.concept,
        args.out,
        frozen_steps=args.sample_steps,
        recorded=recorded,
        allow_model_mismatch=args.allow_model_mismatch,
    )
    sizes = ", ".join(f"{k} {v:,} bytes" for k, v in info["bytes"].items())
    shown = printable(str(info["concept_id"]))  # from concept.json: untrusted
    print(f"exported {shown} as {info['token']} to {info['folder']} ({sizes})")
    print(f"base (shared by this domain's concepts): {info['base_folder']}")
    print(info["use"])
    return 0
