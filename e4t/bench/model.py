"""``e4t bench model``: parameter counts, concept size, and one training step's time and
peak memory on an architecture built with random weights."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from e4t.bench.common import model_config


@dataclass
class ModelBench:
    arch: str
    resolution_px: int
    batch_size: int
    dtype: str
    device: str
    offsets_form: str
    params: dict[str, int]
    concept_bytes: int
    step_seconds: float
    peak_memory_bytes: int
    memory_kind: str

    def report(self) -> str:
        lines = [
            f"model bench: arch={self.arch} offsets={self.offsets_form} dtype={self.dtype} "
            f"device={self.device}",
            "  parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in self.params.items()),
            f"  concept artifact: {self.concept_bytes:,} bytes "
            f"({self.concept_bytes / 2**20:.2f} MiB)",
            f"  training step (forward + backward), {self.resolution_px} px, batch "
            f"{self.batch_size}: {self.step_seconds:.3f} s",
            f"  peak memory ({self.memory_kind}): {self.peak_memory_bytes / 2**30:.2f} GiB",
        ]
        return "\n".join(lines)


def bench_model(
    arch: str = "tiny",
    resolution_px: int = 64,
    batch_size: int = 4,
    dtype: str = "fp32",
    device: str = "cpu",
    offsets_form: str = "multiplicative",
    num_steps: int = 3,
    gradient_checkpointing: bool = False,
) -> ModelBench:
    """Parameter counts, concept size, and time + peak memory of one E4T training step."""
    import resource

    import torch

    from e4t.config import LossConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel
    from e4t.training.step import Batch, compute_loss

    config = model_config(
        arch,
        dtype=dtype,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
        **{"offsets.form": offsets_form},
    )
    model = E4TModel.from_config(config, base=build_base_models(arch, config))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {
        "base UNet": count(model.base.unet),
        "CLIP vision": count(model.image_encoder),
        "encoder": count(model.encoder),
        "offsets": count(model.offsets),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cls = torch.zeros(
            1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size
        )
        folder = model.save_concept(Path(tmp) / "concept", cls)
        concept_bytes = sum(p.stat().st_size for p in folder.iterdir())

    size = model.image_encoder.config.image_size
    gen = torch.Generator(device).manual_seed(0)
    batch = Batch(
        pixel_values=torch.rand(
            batch_size, 3, resolution_px, resolution_px, generator=gen, device=device
        )
        * 2
        - 1,
        clip_pixel_values=torch.randn(batch_size, 3, size, size, generator=gen, device=device),
        prompts=["a photo of {}"] * batch_size,
        mask=torch.ones(batch_size, 1, resolution_px, resolution_px, device=device),
    )
    optimizer = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-5)
    cuda = device.startswith("cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        compute_loss(model, batch, LossConfig(), gen).loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, lazy init
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    seconds = (time.perf_counter() - start) / num_steps
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "CUDA allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    return ModelBench(
        arch=arch,
        resolution_px=resolution_px,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        offsets_form=offsets_form,
        params=params,
        concept_bytes=concept_bytes,
        step_seconds=seconds,
        peak_memory_bytes=peak,
        memory_kind=kind,
    )
