"""``e4t init-model``, ``e4t init-domain``: random-weight base models, untrained domain models."""

from __future__ import annotations

import argparse
from typing import Any

from e4t.cli.common import ARCH_CHOICES, add_config_args


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_init_model_parser(sub)
    _add_init_domain_parser(sub)


def _add_init_model_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init-model",
        help="write a base model preset (random weights)",
        description="Write a complete diffusers Stable Diffusion folder + CLIP "
        "vision tower with seeded random weights and the real CLIP tokenizer.",
    )
    p.add_argument("dest")
    p.add_argument("--arch", default="tiny", choices=ARCH_CHOICES, help="model architecture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.set_defaults(func=run_init_model)


def run_init_model(args: argparse.Namespace) -> int:
    from e4t.models.architectures import init_model

    out = init_model(
        args.dest, arch=args.arch, seed=args.seed, prediction_type=args.prediction_type
    )
    print(f"wrote the {args.arch} base model ({args.prediction_type}) to {out}")
    return 0


def _load_model_config(args: argparse.Namespace) -> Any:
    from e4t.config import ModelConfig, load_config

    return load_config(
        ModelConfig, "model", args.preset, args.overrides, values={"base_model": args.base_model}
    )


def _add_init_domain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init-domain", help="write an untrained domain model (encoder + zero offsets)"
    )
    p.add_argument("dest")
    p.add_argument("--base-model", help="base model folder or hub id (default: model config)")
    p.add_argument("--seed", type=int, default=0)
    add_config_args(p)
    p.set_defaults(func=run_init_domain)


def run_init_domain(args: argparse.Namespace) -> int:
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(_load_model_config(args), seed=args.seed)
    out = model.save_pretrained(args.dest)
    print(f"wrote an untrained domain model (fresh encoder, zero offsets) to {out}")
    return 0
