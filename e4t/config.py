"""Typed configuration: one pydantic model per stage, YAML presets, ``--set a.b=v`` overrides.

A preset is a YAML file holding only what differs from the defaults; it is named either by
a path or by its name under ``configs/<stage>/``. Overrides are applied last. The resolved
config is saved beside every output (:func:`dump_config`).

Infrastructure settings come from ``E4T_*`` environment variables (:func:`data_dir`),
secrets only from the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from e4t.evaluation.methods import MethodName, default_methods  # the registry: torch-free
from e4t.models.arch_names import ArchName as ArchName  # re-exported: flows type --arch with it

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: the most sampling steps a preview may take (schedulers are trained on 1000 timesteps)
MAX_SAMPLING_STEPS = 1000


class StrictModel(BaseModel):
    # allow_inf_nan=False: a NaN threshold compares False with everything (it would let
    # every detection through, or none); no setting here means infinity
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- curation


class DecodeConfig(StrictModel):
    max_pixels: int = Field(
        89_478_485, gt=0, description="refuse images with more pixels (decompression bombs)"
    )
    max_bytes: int = Field(200 * 2**20, gt=0, description="refuse files larger than this")
    max_decoded_megapixels: float = Field(
        24.0,
        gt=0,
        description="larger images are reduced by an integer factor while decoding (JPEG: "
        "by the codec); the RGB result is at most this (72 MB at 24 MP)",
    )
    max_decode_mib: int = Field(
        384,
        gt=0,
        description="refuse images whose pixels in the source's depth (Pillow's storage, "
        "after JPEG scaling) exceed this: with max_decoded_megapixels, bounds a decode's memory",
    )


class DetectConfig(StrictModel):
    backend: Literal["dlib", "face-alignment"] = "dlib"
    dlib_detector: Literal["hog", "mmod"] = Field(
        "hog", description="HOG: ~0.1 s per 1024-px image on a CPU; MMOD (CNN): ~9 s"
    )
    min_detection_score: float = Field(
        0.5, description="drop detections scoring lower (HOG fires at ~0.07 on textures)"
    )
    detect_max_side_px: int = Field(
        1024, gt=0, description="detect on a copy downscaled to this long side (speed)"
    )
    upsample_below_px: int = Field(
        800, ge=0, description="upsample once for detection when the long side is smaller"
    )
    device: str = Field("cpu", description="face-alignment only: torch device")
    batch_size: int = Field(8, gt=0, description="images per backend call where it batches")
    max_batch_megapixels: float = Field(
        30.0,
        gt=0,
        description="decoded pixels held for one backend call: bounds a worker's memory "
        "(30 MP of RGB ≈ 90 MB, plus the detector's copies)",
    )


class AlignConfig(StrictModel):
    resolution_px: int = Field(512, ge=32, le=4096)
    transform_oversample: int = Field(
        2, ge=1, le=4, description="quad-transform at this multiple, then Lanczos down"
    )
    enable_padding: bool = True


class QualityConfig(StrictModel):
    min_face_px: float = Field(
        64.0, ge=0, description="minimum face size in source pixels (landmark box side)"
    )
    min_sharpness: float = Field(
        10.0, ge=0, description="minimum variance of the Laplacian of the 256-px grey crop"
    )
    max_abs_yaw_deg: float = Field(45.0, ge=0, le=90)
    multiple_faces: Literal["largest", "each", "reject"] = "largest"
    dedup: bool = True
    dedup_max_hamming: int = Field(
        4, ge=0, le=15, description="64-bit perceptual hashes this close are near-duplicates"
    )


class ShardConfig(StrictModel):
    name: str = Field("faces", pattern=r"^[A-Za-z0-9_-]+$")
    num_images_per_partition: int = Field(
        64, gt=0, description="inputs per partition; one partition writes one shard"
    )
    jpeg_quality: int = Field(95, ge=50, le=100)


class CurateConfig(StrictModel):
    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    align: AlignConfig = AlignConfig()
    quality: QualityConfig = QualityConfig()
    shards: ShardConfig = ShardConfig()


# --------------------------------------------------------------------------- model

DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class EncoderConfig(StrictModel):
    hidden_dim: int = Field(768, gt=0)
    clip_layer_stride: int = Field(2, gt=0, description="read the [CLS] of every n-th layer")
    leaky_relu_slope: float = 0.2


class OffsetConfig(StrictModel):
    form: Literal["multiplicative", "lowrank"] = "multiplicative"
    rank: int = Field(4, gt=0, description="lowrank only")
    targets: list[Literal["attn1", "attn2"]] = ["attn1", "attn2"]
    projections: list[Literal["to_q", "to_k", "to_v", "to_out.0"]] = ["to_q", "to_k", "to_v"]


class ModelConfig(StrictModel):
    base_model: str = Field("data/models/tiny", description="diffusers SD 1.x/2.x folder or hub id")
    image_encoder: str | None = Field(
        None,
        description="CLIP vision model; None: the base folder's image_encoder/, else "
        + DEFAULT_IMAGE_ENCODER,
    )
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "cpu"
    attention: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    class_word: str = "face"
    placeholder_token: str = "<e4t>"
    embedding_scale: float = Field(0.1, description="s in v* = e(class) + s·E")
    encoder: EncoderConfig = EncoderConfig()
    offsets: OffsetConfig = OffsetConfig()


class LossConfig(StrictModel):
    lambda_emb: float = Field(0.01, ge=0, description="weight of ‖s·E‖² (the offset only)")
    lambda_w: float = Field(1e-4, ge=0, description="weight of Σ‖Δ‖² over the weight offsets")
    use_mask: bool = Field(True, description="weight the diffusion loss by the face mask")
    mask_floor: float = Field(
        0.0, ge=0, le=1, description="weight outside the mask (0: face only, 1: no masking)"
    )


# --------------------------------------------------------------------------- pretraining

DEFAULT_TEMPLATES = [
    "a photo of {}",
    "a close-up photo of {}",
    "a portrait of {}",
    "a cropped photo of {}",
    "a good photo of {}",
    "a photo of the face of {}",
    "a bright photo of {}",
]


class DataConfig(StrictModel):
    shards: str = Field("data/demo/shards", description="curated folder, .tar URL or pattern")
    resolution_px: int = Field(64, ge=16, description="training resolution (crops are resized)")
    shuffle_buffer: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader workers per rank")
    hflip: bool = True
    templates: list[str] = Field(DEFAULT_TEMPLATES, min_length=1, description="prompt templates")
    num_preview: int = Field(2, ge=0, description="held-out faces for the preview grid")
    fixed_batch: bool = Field(
        False, description="repeat the first batch with the same noise (a convergence check)"
    )


class OptimConfig(StrictModel):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)


class TrainConfig(StrictModel):
    num_steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1, description="per rank, per micro-step")
    global_batch: int | None = Field(
        None,
        ge=1,
        description="samples per optimizer step over all ranks; when set, optim.grad_accum "
        "is global_batch / (batch_size × ranks), fixed at launch for the world it gets",
    )
    seed: int = 0
    trainable: list[Literal["encoder", "offsets", "clip"]] = ["encoder", "offsets"]
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast on GPU")
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    preview_every: int = Field(0, ge=0, description="0: only at the end")
    preview_steps: int = Field(
        10, ge=1, le=MAX_SAMPLING_STEPS, description="sampling steps of the preview images"
    )


class LaunchConfig(StrictModel):
    """How torchrun starts the ranks: processes per node, nodes, this node's rank and the
    c10d rendezvous (several nodes only). Global batch = batch_size × grad_accum × world."""

    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) on this node")
    nnodes: int = Field(1, ge=1, description="nodes taking part")
    node_rank: int = Field(0, ge=0, description="this node's rank (0 tracks and registers)")
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of the c10d rendezvous, reachable from every node"
    )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class PretrainConfig(StrictModel):
    domain: str = Field("faces", pattern=r"^[a-z0-9-]+$", description="model name e4t-<domain>")
    experiment: str = "e4t-pretrain"
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _trainable_dtype(self) -> PretrainConfig:
        if self.model.dtype == "fp16":
            raise ValueError(FP16_REFUSAL)
        return self


FP16_REFUSAL = (
    "model.dtype=fp16 cannot be trained or tuned: there is no loss scaling for the weight "
    "offsets, and W0 ⊙ Δ products underflow in fp16. Use model.dtype=bf16 (GPUs since "
    "Ampere), or fp32 weights with train.mixed_precision=fp16 (autocast + GradScaler)."
)


def for_world(config: PretrainConfig, world_size: int) -> PretrainConfig:
    """The config a launch of ``world_size`` ranks trains: with ``train.global_batch`` set,
    ``optim.grad_accum`` makes that batch on this many GPUs (16 = 4 × 4 × 1 = 4 × 1 × 4)."""
    target = config.train.global_batch
    if target is None:
        return config
    per_step = config.train.batch_size * world_size
    if target % per_step:
        raise ConfigError(
            f"train.global_batch={target} is not a multiple of train.batch_size × ranks = "
            f"{config.train.batch_size} × {world_size}: change train.batch_size, the number of "
            "processes, or train.global_batch"
        )
    optim = config.optim.model_copy(update={"grad_accum": target // per_step})
    return config.model_copy(update={"optim": optim})


def global_batch_size(config: PretrainConfig, world_size: int) -> int:
    """Samples per optimizer step over all ranks: ``train.batch_size`` per rank and
    micro-step × ``optim.grad_accum`` micro-steps × ``world_size`` ranks (the one place this
    product is made: the CLI's line, the job's log, the run's tag and the trainer's
    samples/s read it)."""
    return config.train.batch_size * config.optim.grad_accum * world_size


# --------------------------------------------------------------------------- personalization


class TuneConfig(StrictModel):
    num_steps: int = Field(15, ge=0, description="tuning steps per concept (5–15)")
    draws_per_concept: int = Field(8, ge=1, description="(noise, t, prompt) draws per step")
    lr: float = Field(1e-2, gt=0, description="the rate of every group not set below")
    # Per-group rates. AdamW normalises each parameter's step to about lr, so one rate moves
    # every group by the same amount per entry. That suits the word correction (an offset
    # in text-embedding space whose entries are ~1e-2) and the deltas' B factors (they start
    # at zero; a step of lr is a small, visible change). The head is the pretrained output
    # layer itself: a step of lr on each of its weights moves E(·) by up to lr × hidden width,
    # so it gets a tenth by default — the concept tunes around the domain encoder instead of
    # overwriting it in its first steps.
    lr_word: float | None = Field(None, gt=0, description="the word correction (default lr)")
    lr_head: float | None = Field(
        None, gt=0, description="the concept's output layer (default lr / 10)"
    )
    lr_deltas: float | None = Field(None, gt=0, description="the low-rank deltas (default lr)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="per concept")
    rank: int = Field(4, ge=1, description="rank of each concept's weight deltas")
    trainable: list[Literal["word", "head", "offsets"]] = ["word", "head", "offsets"]
    lambda_emb: float = Field(0.01, ge=0)
    lambda_w: float = Field(1e-4, ge=0)
    use_mask: bool = True
    mask_floor: float = Field(0.1, ge=0, le=1)
    templates: list[str] = Field(DEFAULT_TEMPLATES, min_length=1, description="prompt templates")
    resolution_px: int = Field(64, ge=16, description="faces are resized to this")
    artifact_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    autocast: Literal["auto", "bf16", "off"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA (trainable tensors stay fp32), none on a CPU",
    )
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        "off",
        description="torch.compile the whole tuning step (fullgraph; reduce-overhead: CUDA "
        "graphs); a job's short last pass is padded to concepts_per_pass",
    )


class PersonalizeConfig(StrictModel):
    tune: TuneConfig = TuneConfig()
    curate: CurateConfig = CurateConfig(align=AlignConfig(resolution_px=256))
    concepts_per_pass: int = Field(8, ge=1, description="concepts tuned together in one pass")
    preview_steps: int = Field(
        20, ge=1, le=MAX_SAMPLING_STEPS, description="sampling steps of the previews"
    )
    # a preview costs a sampling run (200 prompts of one concept took 497 s); outside
    # tuning_hash, so changing it never redoes a finished concept
    max_prompts_per_concept: int = Field(
        8, ge=1, le=100, description="preview prompts a concept keeps from concepts.csv"
    )
    seed: int = 0


# --------------------------------------------------------------------------- evaluation

# the methods' names, defaults and descriptions are their registry's (one class per method
# under e4t/evaluation/methods/); EvalMethod is a Literal of its names (an enum in schemas)
EvalMethod = MethodName
EVAL_METHODS: list[str] = default_methods()


class IdentityConfig(StrictModel):
    backend: Literal["dlib", "arcface"] = Field(
        "dlib", description="dlib: ResNet descriptor, offline; arcface: IResNet safetensors"
    )
    upsample: int = Field(1, ge=0, le=3, description="dlib detector upsampling")
    arcface_weights: str | None = Field(None, description="IResNet weights (.safetensors)")
    arcface_depth: Literal["r18", "r34", "r50", "r100"] = "r50"


class ClipScoreConfig(StrictModel):
    model: str = Field(
        "openai/clip-vit-large-patch14",
        description="transformers CLIPModel id or folder; 'tiny' = a seeded random tiny CLIP",
    )
    device: str = "cpu"


class PromotionConfig(StrictModel):
    enabled: bool = True
    metric: str = Field("e4t.identity", description="evaluation metric compared")
    mode: Literal["max", "min"] = "max"
    min_delta: float = Field(0.0, description="the candidate must beat the champion by this")
    min_face_rate: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="refuse when fewer generated samples held a detected face (0: never)",
    )
    alias: str = "champion"


class EvaluateConfig(StrictModel):
    prompts: list[str] = [
        "a photo of {}",
        "a painting of {} in the style of van gogh",
        "{} as an astronaut, digital art",
        "a pencil sketch of {}",
    ]
    seeds: list[int] = [0, 1]
    steps: list[int] = Field([0, 5, 15, 50], description="tuning budgets reported")
    methods: list[EvalMethod] = Field(
        default_factory=default_methods,
        description="E4T and the baselines, same budgets and seeds (e4t.evaluation.methods)",
    )
    max_concepts: int = Field(8, ge=1, description="concepts evaluated (sorted by id)")
    full_tune_lr: float = Field(
        1e-5, gt=0, description="e4t-full: the rate of the encoder + domain offsets"
    )
    concepts_per_pass: int = Field(8, ge=1)
    tune: TuneConfig = TuneConfig()
    curate: CurateConfig = CurateConfig(align=AlignConfig(resolution_px=256))
    generation_steps: int = Field(30, ge=1)
    guidance_scale: float = 7.5
    resolution_px: int | None = Field(
        None, ge=16, description="generated image size (default: the UNet's native size)"
    )
    identity: IdentityConfig = IdentityConfig()
    clip: ClipScoreConfig = ClipScoreConfig()
    promotion: PromotionConfig = PromotionConfig()
    seed: int = 0

    @field_validator("steps")
    @classmethod
    def _sorted_steps(cls, steps: list[int]) -> list[int]:
        if not steps or min(steps) < 0:
            raise ValueError("steps: a non-empty list of budgets >= 0")
        return sorted(set(steps))


# --------------------------------------------------------------------------- loading

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """A preset or override that does not fit the stage's config."""


Overrides = Mapping[str, Any]
"""Dotted keys to values, e.g. ``{"train.batch_size": 8}`` (a flow's ``overrides``); a
nested mapping (``{"train": {"batch_size": 8}}``) merges into its section."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    last = keys[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        node[last] = _merge(node[last], dict(value))
    else:
        node[last] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_preset_path(stage: str, preset: str) -> Path:
    """A preset by path, or by name under ``configs/<stage>/<name>.yaml``."""
    as_path = Path(preset)
    if as_path.suffix in (".yaml", ".yml") and as_path.exists():
        return as_path
    named = REPO_CONFIGS / stage / f"{preset}.yaml"
    if named.exists():
        return named
    known = sorted(p.stem for p in (REPO_CONFIGS / stage).glob("*.yaml"))
    raise ConfigError(
        f"preset {preset!r} for stage {stage!r} not found: give a YAML path or one of {known}"
    )


def load_config(
    model: type[ConfigT],
    stage: str,
    preset: str | None = None,
    overrides: list[str] | Overrides | None = None,
    values: Overrides | None = None,
) -> ConfigT:
    """Resolve a stage's config once, at its entry point (a flow or a CLI command):
    defaults ← preset YAML ← ``overrides`` ← ``values``, validated.

    ``overrides`` is the user's way in: ``KEY=VALUE`` strings from ``--set`` (values parsed
    as YAML) or a mapping of dotted keys from a flow. ``values`` are the entry point's flat
    parameters under their dotted keys (``{"train.num_steps": steps}``); None means "not
    given" and leaves the preset's value.
    """
    tree: dict[str, Any] = {}
    if preset:
        path = resolve_preset_path(stage, preset)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a preset must be a YAML mapping")
        tree = _merge(tree, loaded)
    items = (
        list(overrides.items()) if isinstance(overrides, Mapping) else _parse_overrides(overrides)
    )
    items += [(k, v) for k, v in (values or {}).items() if v is not None]
    for dotted, value in items:
        _set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"invalid {stage} config: {err}") from err


def _parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. align.resolution_px=256")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def config_hash(config: BaseModel, exclude: Any = None) -> str:
    """A short, stable hash of a resolved config (for cache keys and run tags); ``exclude``:
    fields left out, as pydantic's ``model_dump`` takes them."""
    blob = json.dumps(config.model_dump(mode="json", exclude=exclude), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def data_dir() -> Path:
    """Where local outputs, caches and the embedded MLflow database live (``E4T_DATA_DIR``)."""
    return Path(os.environ.get("E4T_DATA_DIR", "data")).resolve()
