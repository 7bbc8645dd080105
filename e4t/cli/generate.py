"""``e4t encode-concept`` and ``e4t generate``: a 0-step concept; images of concepts."""

from __future__ import annotations

import argparse
import json
import os

from e4t.cli.common import add_allow_model_mismatch, checked_model


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_encode_concept_parser(sub)
    _add_generate_parser(sub)


def _add_encode_concept_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("encode-concept", help="a 0-step concept: the encoder's prediction alone")
    p.add_argument("image", help="a photo: a path or URL (s3://...)")
    p.add_argument("dest")
    p.add_argument(
        "--model", required=True, help="domain model: models:/NAME@ALIAS, a version URI, a folder"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_encode_concept)


def run_encode_concept(args: argparse.Namespace) -> int:
    from PIL import Image

    from e4t import io as eio
    from e4t.config import DecodeConfig
    from e4t.data.decode import decode_image
    from e4t.generation import clip_pixels
    from e4t.tracking import load_domain_model

    if not eio.exists(args.image):  # checked before the model loads
        raise FileNotFoundError(f"{args.image}: no such image")
    pinned = checked_model(args.model)
    decoded = decode_image(eio.read_bytes(args.image), DecodeConfig())  # capped, upright RGB
    if decoded.image is None:
        raise FileNotFoundError(f"{args.image}: not a usable image ({decoded.reason})")
    model = load_domain_model(pinned, device=args.device)
    cls = model.clip_cls(clip_pixels(model, Image.fromarray(decoded.image)))
    out = model.save_concept(args.dest, cls, extra={"source": args.image, "steps": 0})
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote a 0-step concept of {args.image} to {out} ({size:,} bytes)")
    return 0


def concept_folder_names(ids: list[str]) -> list[str]:
    """One output folder name per concept of a multi-concept ``generate``: its id (from its
    concept.json: untrusted) reduced to [A-Za-z0-9_.-] (≤ 64), ``-<k>`` added on a clash."""
    import re

    names: list[str] = []
    for k, concept_id in enumerate(ids):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", concept_id)[:64].strip(".-") or f"concept{k}"
        names.append(f"{name}-{k}" if name in names else name)
    return names


def _add_generate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="images of a concept from prompts ({} = the concept)")
    p.add_argument(
        "--model", required=True, help="domain model: models:/NAME@ALIAS, a version URI, a folder"
    )
    p.add_argument(
        "--concept",
        action="append",
        required=True,
        help="concept folder or URL (s3://...); repeatable: several concepts sample together, "
        "each one's PNGs in OUT/<concept id>/",
    )
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help='e.g. "a photo of {} as an astronaut" (repeatable)',
    )
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="image k of a prompt uses seed + k")
    p.add_argument("--sample-steps", type=int, default=30, help="denoising steps")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--scheduler", default="ddim", choices=["ddim", "ddpm", "pndm", "euler", "euler-a", "dpm++"]
    )
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--compile",
        default="off",
        choices=["off", "default", "reduce-overhead"],
        help="torch.compile the sampling loop's UNet (a GPU's: compiling takes minutes; "
        "reduce-overhead adds CUDA graphs)",
    )
    p.add_argument("--out", default="outputs", help="folder for the PNGs")
    add_allow_model_mismatch(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import contextlib

    from e4t.generation import (
        GenerationConfig,
        generate,
        model_provenance,
        provenance,
        save_images,
        staged_concept,
    )
    from e4t.tracking import load_domain_model

    with contextlib.ExitStack() as stack:
        # every concept checked (and staged) before the model loads
        concept_dirs = [stack.enter_context(staged_concept(url)) for url in args.concept]
        pinned = checked_model(args.model)
        model = load_domain_model(pinned, device=args.device)
        bank = model.load_concepts(concept_dirs, args.allow_model_mismatch)
        cls = bank.cls.to(model.image_encoder.dtype)
        metas = [json.loads((d / "concept.json").read_text()) for d in concept_dirs]
    domain = model_provenance(args.model, model.fingerprint(), pinned)
    ids = [str(m.get("concept_id") or d.name) for m, d in zip(metas, concept_dirs, strict=True)]
    config = GenerationConfig(
        num_steps=args.sample_steps,
        guidance_scale=args.cfg,
        negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        compile=args.compile,
    )
    images = generate(model, cls, args.prompt, args.num_images, args.seed, config)
    # one concept: its PNGs in OUT (as ever); several: OUT/<concept id>/ each
    folders = [args.out]
    if len(ids) > 1:
        folders = [os.path.join(args.out, name) for name in concept_folder_names(ids)]
    for k, (concept_id, url, folder) in enumerate(zip(ids, args.concept, folders, strict=True)):
        mine = [item for item in images if item.concept_index == k]
        for path in save_images(mine, folder, config, provenance(concept_id, url, domain)):
            print(path)
    return 0
