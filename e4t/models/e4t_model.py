"""The composed E4T model: frozen base models + encoder + weight offsets + placeholder token.

``v* = e(class_word) + s · E(x, z_t, t)`` is injected at the placeholder's positions in the
text encoder's input embeddings through hooks on its token-embedding layer, so the text
encoder, its vocabulary and its weights stay the base model's.

Artifacts (safetensors + JSON, never pickle):

- a domain model folder: ``e4t_config.json``, ``encoder/`` and ``offsets/``
  (diffusers ``save_pretrained`` folders);
- a concept folder: ``concept.json`` + ``concept.safetensors`` holding the image's CLIP
  [CLS] tokens and only the tensors tuning changed (encoder and offsets), in fp16 by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from e4t.config import ModelConfig
from e4t.models.base import BaseModels, is_local_source, load_base_models, resolve_image_encoder
from e4t.models.concept import CONCEPT_CONFIG, CONCEPT_TENSORS, ConceptBank
from e4t.models.encoder import E4TEncoder
from e4t.models.fused import ProjectionGroup, group_projections
from e4t.models.offsets import WeightOffsets
from e4t.models.unet_features import down_and_mid_outputs

logger = logging.getLogger(__name__)

CONFIG_NAME = "e4t_config.json"
CLIP_TENSORS = "model.safetensors"  # clip/: the CLIP layers, when pretraining tuned them


class ArtifactError(ValueError):
    """A model or concept file that does not fit the model it is loaded into."""


class ConceptModelMismatch(ArtifactError):
    """A concept tuned against another domain model (encoder, offsets, base or dtype) than
    the one it is loaded into."""


#: the CLI flag that loads a concept into a model it was not tuned against, deliberately
ALLOW_MISMATCH_FLAG = "--allow-model-mismatch"


def _shown(value: Any, cap: int = 200) -> str:
    """A value read from a file, printable: capped and escaped (``ascii``)."""
    text = str(value)
    return ascii(text[:cap] + ("…" if len(text) > cap else ""))


def check_concept_binding(
    meta: dict[str, Any], model_fingerprint: str, folder: str | Path, allow_mismatch: bool = False
) -> None:
    """Refuse a concept whose ``domain_fingerprint`` (concept.json) is not the loaded model's:
    its deltas and word were tuned on another encoder, offsets or base, so it would silently
    give another concept's images. ``allow_mismatch`` loads it anyway, with a warning."""
    found = meta.get("domain_fingerprint")
    if found == model_fingerprint:
        return
    model_uri = meta.get("model_uri") or "(not recorded)"
    if allow_mismatch:
        logger.warning(
            "%s was tuned against domain model %s (%s), loaded into %s as asked (%s)",
            folder,
            _shown(found),
            _shown(model_uri),
            model_fingerprint,
            ALLOW_MISMATCH_FLAG,
        )
        return
    raise ConceptModelMismatch(
        f"{folder} was tuned against domain model fingerprint {_shown(found)} "
        f"(its model_uri: {_shown(model_uri)}), but the loaded model's fingerprint is "
        f"{model_fingerprint!r} (another encoder, offsets, base model or dtype). Load the model "
        f"it was tuned with, personalize the photo again against this model, or pass "
        f"{ALLOW_MISMATCH_FLAG} (allow_model_mismatch=True) to use it with this model anyway."
    )


#: a base component's files that define it: configs, tokenizer files, weights
_IDENTITY_SUFFIXES = (".json", ".txt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_BIG_FILE_BYTES = 64 * 2**20  # file hashes above this are kept under $E4T_CACHE_DIR
_file_digests: dict[tuple[str, int, int], str] = {}
_HEX = "0123456789abcdef"


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes. A Hugging Face cache snapshot links LFS files to
    ``blobs/<sha256>``: that name is the digest, read for free. Others are hashed once per
    (path, size, mtime) — in memory, and for big files under ``$E4T_CACHE_DIR/sha256``."""
    resolved = path.resolve()
    name = resolved.name
    if resolved.parent.name == "blobs" and len(name) == 64 and set(name) <= set(_HEX):
        return name
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key in _file_digests:
        return _file_digests[key]
    from e4t.samples import cache_dir

    record = cache_dir() / "sha256" / hashlib.sha256(repr(key).encode()).hexdigest()
    if stat.st_size >= _BIG_FILE_BYTES and record.exists():
        digest = record.read_text().strip()
    else:
        sha = hashlib.sha256()
        with open(resolved, "rb") as f:
            for block in iter(lambda: f.read(2**22), b""):
                sha.update(block)
        digest = sha.hexdigest()
        if stat.st_size >= _BIG_FILE_BYTES:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            tmp.replace(record)
    _file_digests[key] = digest
    return digest


def _identity_files(folder: Path) -> list[Path]:
    """The files of one component folder that make it what it is: configs and tokenizer
    files, and the weights ``from_pretrained`` reads (non-variant safetensors, else .bin)."""
    files = sorted(f for f in folder.iterdir() if f.is_file())
    weights = [f for f in files if f.suffix in _WEIGHT_SUFFIXES and f.name.count(".") == 1]
    if any(f.suffix == ".safetensors" for f in weights):
        weights = [f for f in weights if f.suffix == ".safetensors"]
    return sorted([f for f in files if f.suffix in _IDENTITY_SUFFIXES] + weights)


def _source_folder(source: str, probe: str) -> Path | None:
    """A base source's folder: the local folder, or a hub id's snapshot in the local Hugging
    Face cache (the revision ``main`` named when it was loaded); None for a model built in
    memory."""
    if is_local_source(source):
        folder = Path(source).expanduser()
        return folder if folder.is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, probe)
    if not isinstance(found, str):
        raise ArtifactError(
            f"base model {source!r} is not in the local Hugging Face cache, so its identity "
            "(the fingerprint concepts are bound to) cannot be read: load it once with network "
            "access, or point base_model at a local copy"
        )
    return Path(found).parent


def base_identity(base: BaseModels, config: ModelConfig) -> str:
    """The identity of the frozen base a domain model runs on: sha256 over, for each
    component folder read (unet, vae, text_encoder, tokenizer, scheduler, feature_extractor,
    the image encoder),
    each defining file's name and content digest (:func:`_file_digest`). A local folder and
    the hub snapshot it was copied from get the same identity; hub LFS weights are named by
    their sha256, so a hub base costs no hashing, a local SD 1.5 folder one read per file
    (cached). A base built in memory (benchmarks) hashes its modules' weights instead."""
    digest = hashlib.sha256()
    folder = _source_folder(base.source, "model_index.json")
    if folder is None:  # built in memory: the weights themselves
        modules: dict[str, nn.Module] = {
            "unet": base.unet,
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "image_encoder": base.image_encoder,
        }
        if base.text_encoder_2 is not None:
            modules["text_encoder_2"] = base.text_encoder_2
        for name, module in modules.items():
            for key, value in sorted(module.state_dict().items()):
                digest.update(f"{name}.{key}".encode())
                digest.update(value.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()
    names: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    names += ("feature_extractor", "text_encoder_2", "tokenizer_2")  # absent ones: skipped
    components = [(name, folder / name) for name in names]
    enc_repo, enc_sub = resolve_image_encoder(config.model_copy(update={"base_model": base.source}))
    if enc_sub:
        components.append(("image_encoder", folder / enc_sub))
    else:  # a vision tower of its own (a folder or a hub id)
        enc_folder = _source_folder(enc_repo, "config.json")
        components.append(("image_encoder", enc_folder or Path(enc_repo)))
    for name, sub in components:
        if not sub.is_dir():
            continue
        for f in _identity_files(sub):
            digest.update(f"{name}/{f.name}:{_file_digest(f)}".encode())
    return digest.hexdigest()


class _StopForward(Exception):
    """Raised by the mid-block hook: the encoder needs no up path."""


def check_tensors(
    path: Path,
    found: dict[str, torch.Tensor],
    expected: dict[str, torch.Size],
    allow_subset: bool = False,
) -> None:
    """Refuse unknown, missing or mis-shaped tensors, naming the file and the keys."""
    unknown = sorted(set(found) - set(expected))
    missing = [] if allow_subset else sorted(set(expected) - set(found))
    shapes = sorted(
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k])}"
        for k in set(found) & set(expected)
        if found[k].shape != expected[k]
    )
    problems = []
    if unknown:
        problems.append(f"unknown tensors {unknown[:5]}{'…' if len(unknown) > 5 else ''}")
    if missing:
        problems.append(f"missing tensors {missing[:5]}{'…' if len(missing) > 5 else ''}")
    if shapes:
        problems.append(f"shape mismatches {shapes[:5]}")
    if problems:
        raise ArtifactError(
            f"{path} does not fit this model: {'; '.join(problems)}. "
            "Was it made from another base model or config?"
        )


def _check_regular(path: Path) -> None:
    """A file to read is a regular file: a FIFO or a device would hang or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as err:
        raise ArtifactError(f"{path} is missing") from err
    except OSError as err:
        raise ArtifactError(f"{path} is unreadable ({type(err).__name__}: {err.strerror})") from err
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path} is not a regular file: re-create it")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ArtifactError(f"{path} is missing")
    _check_regular(path)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({err}); "
            "it may be truncated or corrupted — re-create it"
        ) from err


MAX_CONCEPT_JSON_BYTES = 1 << 20  # a concept.json is a few hundred bytes
MAX_CONCEPT_RANK = 1024


def _quoted(value: Any, cap: int = 80) -> str:
    """A value read from a concept file, printable on one line: capped and escaped."""
    text = str(value)
    return ascii(text[:cap] + ("…" if len(text) > cap else ""))


def validate_concept_meta(source: str | Path, raw: bytes) -> dict[str, Any]:
    """A concept's ``concept.json`` bytes (untrusted) as its metadata: a UTF-8 JSON object
    whose ``rank`` (default 4) is an int in 1..:data:`MAX_CONCEPT_RANK` and whose
    ``class_word`` and ``concept_id``, when present, are strings. Raises ArtifactError naming
    ``source`` and what is wrong; the returned dict holds ``rank`` as an int."""
    where = f"{source}: {CONCEPT_CONFIG}" if not str(source).endswith(CONCEPT_CONFIG) else source
    fix = "re-create the concept (e4t personalize or encode-concept)"
    if len(raw) > MAX_CONCEPT_JSON_BYTES:
        raise ArtifactError(f"{where} is over {MAX_CONCEPT_JSON_BYTES} bytes: {fix}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{where} is not UTF-8 text (byte {err.start}): {fix}") from err
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
            f"truncated?): {fix}"
        ) from err
    except (RecursionError, ValueError) as err:  # nested too deep, an integer too long
        raise ArtifactError(
            f"{where} is not JSON a reader can take ({_quoted(err)}): {fix}"
        ) from err
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where} holds a JSON {type(meta).__name__}, not an object: {fix}")
    rank = meta.get("rank", 4)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_CONCEPT_RANK:
        raise ArtifactError(
            f"{where}: rank {_quoted(rank)} is not an integer in 1..{MAX_CONCEPT_RANK}: {fix}"
        )
    for key in ("class_word", "concept_id"):
        if key in meta and not isinstance(meta[key], str):
            raise ArtifactError(f"{where}: {key} {_quoted(meta[key])} is not a string: {fix}")
    return {**meta, "rank": rank}


def read_concept_meta(folder: Path) -> dict[str, Any]:
    """:func:`validate_concept_meta` of ``folder/concept.json``, read with a cap."""
    path = folder / CONCEPT_CONFIG
    try:  # non-blocking: a FIFO put there is refused below, never waited on
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as err:
        raise ArtifactError(f"{folder} is not an E4T concept ({CONCEPT_CONFIG} missing)") from err
    except OSError as err:
        raise ArtifactError(f"{path} is unreadable ({type(err).__name__}: {err.strerror})") from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{path} is not a regular file: re-create the concept")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_CONCEPT_JSON_BYTES + 1)
    except OSError as err:
        raise ArtifactError(f"{path} is unreadable ({type(err).__name__}: {err.strerror})") from err
    finally:
        os.close(fd)
    return validate_concept_meta(path, raw)


def check_finite_float(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that are not floating point (an int8 file would load as garbage) or hold
    NaN/Inf (black images, a NaN embedding), naming the file and the tensors."""
    not_float = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if not_float:
        dtypes = sorted({str(tensors[k].dtype).removeprefix("torch.") for k in not_float})
        raise ArtifactError(
            f"{path}: tensors {not_float[:5]} are {'/'.join(dtypes)}, not floating point; "
            "re-create the concept"
        )
    bad = sorted(k for k, v in tensors.items() if not bool(torch.isfinite(v.float()).all()))
    if bad:
        raise ArtifactError(
            f"{path}: tensors {bad[:5]}{'…' if len(bad) > 5 else ''} hold NaN or Inf values; "
            "re-create the concept"
        )


def word_width(base: BaseModels) -> int:
    """The width of v* (D_word): the text encoder's token-embedding width; on SDXL both
    encoders' (768 + 1280 = 2048), the encoder's head predicting both at once."""
    encoders = [base.text_encoder, base.text_encoder_2]
    return sum(e.get_input_embeddings().embedding_dim for e in encoders if e is not None)


# one (B, 77) token-id tensor per text encoder: prompts tokenized (E4TModel.prompt_ids)
PromptIds = tuple[torch.Tensor, ...]


@dataclass
class PromptConditioning:
    """A prompt batch as the UNet reads it: hidden (B, 77, D_cross) and, on SDXL, pooled
    (B, P): the second text encoder's projected pooled output (``text_embeds``)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def expand(self, batch: int) -> PromptConditioning:
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return PromptConditioning(self.hidden.expand(batch, -1, -1), pooled)

    def to(self, dtype: torch.dtype) -> PromptConditioning:
        pooled = None if self.pooled is None else self.pooled.to(dtype)
        return PromptConditioning(self.hidden.to(dtype), pooled)


class TextBranch:
    """One text encoder with its tokenizer and its slice of v*: ``word[:, start:start+width]``
    replaces the placeholder's row of this encoder's input embeddings (hooks on its token
    embedding layer; the placeholder is added to its tokenizer, never to its table)."""

    def __init__(
        self,
        text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        start: int,
        config: ModelConfig,
    ) -> None:
        self.text_encoder, self.tokenizer, self.start = text_encoder, tokenizer, start
        self.width = text_encoder.get_input_embeddings().embedding_dim
        self.class_token_id = self._single_token_id(config.class_word)
        self.placeholder_token_id = self._add_placeholder(config.placeholder_token)
        self.placeholder_mask: torch.Tensor | None = None

    def _single_token_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"class word {word!r} is {len(ids)} tokens {pieces}; "
                "choose a word that is one token, e.g. 'face', 'person', 'cat'"
            )
        return int(ids[0])

    def _add_placeholder(self, token: str) -> int:
        self.tokenizer.add_tokens([token], special_tokens=False)
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"placeholder {token!r} does not tokenize to one token: {ids}")
        return int(ids[0])

    def tokenize(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)

    def class_embedding(self) -> torch.Tensor:
        """e(class_word) in this encoder: (width,)"""
        return self.text_encoder.get_input_embeddings().weight[self.class_token_id]

    def swap_placeholder_ids(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        ids = inputs[0]
        mask = ids == self.placeholder_token_id
        self.placeholder_mask = mask
        # the placeholder is not in the embedding table: look up the class word instead, then
        # overwrite those rows with v* in the forward hook (no host sync to ask whether any)
        ids = torch.where(mask, self.class_token_id, ids)
        return (ids, *inputs[1:])

    def inject(self, output: torch.Tensor, word: torch.Tensor | None) -> torch.Tensor:
        """The token embeddings (B, T, width) with this encoder's slice of ``word``
        (B, D_word) at the placeholder."""
        mask = self.placeholder_mask
        if mask is None:
            return output
        if word is None:
            if not mask.is_meta and mask.any():  # (meta: FLOP counts hold no values)
                raise RuntimeError("prompt holds the placeholder but no v* was given")
            return output
        v_star = word[:, self.start : self.start + self.width].to(output.dtype)  # (B, width)
        if v_star.shape[0] != output.shape[0]:
            raise ValueError(f"{v_star.shape[0]} embeddings for {output.shape[0]} prompts")
        return torch.where(mask[..., None], v_star[:, None, :], output)


class E4TModel(nn.Module):
    """Base models + encoder + offsets. Only ``encoder`` and ``offsets`` hold trainable weights."""

    def __init__(
        self, base: BaseModels, encoder: E4TEncoder, offsets: WeightOffsets, config: ModelConfig
    ) -> None:
        super().__init__()
        self.base = base
        self.config = config
        self.encoder = encoder.to(base.device)
        self.offsets = offsets.to(base.device).attach(base.unet)
        # base modules are registered as children so .to()/.train() reach them
        self.unet, self.vae = base.unet, base.vae
        self.text_encoder, self.image_encoder = base.text_encoder, base.image_encoder
        self.tokenizer = base.tokenizer
        self.text_encoder_2 = base.text_encoder_2  # SDXL's second one, else None
        self.branches = [TextBranch(base.text_encoder, base.tokenizer, 0, config)]
        if base.text_encoder_2 is not None and base.tokenizer_2 is not None:
            width = self.branches[0].width
            self.branches.append(TextBranch(base.text_encoder_2, base.tokenizer_2, width, config))
        self.class_token_id = self.branches[0].class_token_id
        self.placeholder_token_id = self.branches[0].placeholder_token_id
        self._injection: torch.Tensor | None = None
        for branch in self.branches:
            embedding = branch.text_encoder.get_input_embeddings()
            embedding.register_forward_pre_hook(branch.swap_placeholder_ids)
            embedding.register_forward_hook(
                lambda m, i, o, branch=branch: branch.inject(o, self._injection)
            )
        self._empty_prompt: PromptConditioning | None = None
        self.concepts: ConceptBank | None = None
        self._groups: list[ProjectionGroup] | None = None
        self.clip_trained = False  # set_trainable(["clip"]) or a domain model with clip/
        self._base_identity: str | None = None  # the frozen base's, computed once

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, config: ModelConfig, base: BaseModels | None = None, seed: int | None = 0
    ) -> E4TModel:
        """A fresh domain model: new encoder, zero offsets."""
        base = base or load_base_models(config)
        return cls(base, *cls._fresh_parts(config, base, seed), config)

    @staticmethod
    def _fresh_parts(
        config: ModelConfig, base: BaseModels, seed: int | None
    ) -> tuple[E4TEncoder, WeightOffsets]:
        if seed is not None:
            torch.manual_seed(seed)
        vision = base.image_encoder.config
        blocks = [*base.unet.config.block_out_channels, base.unet.config.block_out_channels[-1]]
        encoder = E4TEncoder(
            clip_hidden_size=vision.hidden_size,
            clip_num_layers=vision.num_hidden_layers,
            unet_block_channels=blocks,
            embed_dim=word_width(base),
            hidden_dim=config.encoder.hidden_dim,
            clip_layer_stride=config.encoder.clip_layer_stride,
            leaky_relu_slope=config.encoder.leaky_relu_slope,
        )
        offsets = WeightOffsets.for_unet(
            base.unet,
            targets=tuple(config.offsets.targets),
            projections=tuple(config.offsets.projections),
            form=config.offsets.form,
            rank=config.offsets.rank,
        )
        return encoder, offsets

    @contextmanager
    def without_pretraining(self, seed: int = 0) -> Iterator[E4TModel]:
        """Temporarily a fresh encoder and zero offsets (the "no domain pretraining" baseline);
        the pretrained weights come back on exit."""
        with self.restoring_domain_weights():
            with torch.random.fork_rng():
                encoder, offsets = self._fresh_parts(self.config, self.base, seed)
            self.encoder.load_state_dict(encoder.state_dict())
            self.offsets.load_state_dict(offsets.state_dict())
            self.invalidate_concepts()
            yield self

    @contextmanager
    def restoring_domain_weights(self) -> Iterator[E4TModel]:
        """The encoder and domain offsets as they are now come back on exit, whatever the
        block trained (the full-tuning reference method tunes them per concept)."""
        saved = {k: v.detach().clone() for k, v in self._trained_state().items()}
        trainable = {p: p.requires_grad for p in self.parameters()}
        try:
            yield self
        finally:
            for prefix, module in (("encoder.", self.encoder), ("offsets.", self.offsets)):
                module.load_state_dict(
                    {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
                )
            self.invalidate_concepts()
            for param, flag in trainable.items():
                param.requires_grad_(flag)

    @property
    def is_xl(self) -> bool:
        """The SDXL family: v* spans both text encoders' widths (:func:`word_width`)."""
        return len(self.branches) > 1

    def format_prompts(self, prompts: list[str]) -> list[str]:
        """``{}`` in a prompt stands for the placeholder token."""
        return [p.replace("{}", self.config.placeholder_token) for p in prompts]

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.branches[0].tokenize(self.format_prompts(prompts), self.base.device)

    def encode_prompt(self, prompts: list[str], v_star: torch.Tensor | None = None) -> torch.Tensor:
        """Text-encoder hidden states (B, 77, D) with v* (B, D_word) at the placeholder: the
        last layer's (SD 1.x/2.x); on SDXL both encoders' penultimate layers, concatenated
        (B, 77, D_1 + D_2), as the SDXL pipeline gives the UNet."""
        return self.condition(prompts, v_star).hidden

    def prompt_ids(self, prompts: list[str]) -> PromptIds:
        """``prompts`` tokenized for each text encoder: one (B, 77) tensor per encoder (what
        :meth:`condition` reads in place of strings: a compiled step tokenizes outside)."""
        formatted = self.format_prompts(prompts)
        return tuple(b.tokenize(formatted, self.base.device) for b in self.branches)

    def condition(
        self, prompts: list[str] | PromptIds, v_star: torch.Tensor | None = None
    ) -> PromptConditioning:
        """What the UNet reads of ``prompts`` (strings, or :meth:`prompt_ids`) with v*
        (B, D_word) at the placeholder: the hidden states and, on SDXL, the pooled embedding
        of the second encoder (whose sequence carries v*'s second part, so the pooled
        vector follows from it)."""
        all_ids = prompts if isinstance(prompts, tuple) else self.prompt_ids(prompts)
        self._injection = v_star
        try:
            if not self.is_xl:
                return PromptConditioning(self.text_encoder(all_ids[0])[0])
            hidden, pooled = [], None
            for branch, ids in zip(self.branches, all_ids, strict=True):
                out = branch.text_encoder(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])  # SDXL reads the penultimate layer
                pooled = out[0]  # the last encoder's projected pooled output
            return PromptConditioning(torch.cat(hidden, dim=-1), pooled)
        finally:
            self._injection = None
            for branch in self.branches:
                branch.placeholder_mask = None

    def class_embedding(self) -> torch.Tensor:
        """e(class_word): (D_word,), each text encoder's row side by side on SDXL."""
        rows = [b.class_embedding() for b in self.branches]
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    def time_ids(self, z_t: torch.Tensor) -> torch.Tensor:
        """SDXL's ``add_time_ids`` for latents z_t (B, 4, h, w): (B, 6), the image's original
        size, crop corner (0, 0) and target size in pixels, as the SDXL pipeline makes them
        for an uncropped image of the latents' size."""
        scale = 2 ** (len(self.base.vae.config.block_out_channels) - 1)
        h, w = z_t.shape[-2] * scale, z_t.shape[-1] * scale
        ids = torch.tensor([h, w, 0, 0, h, w], device=z_t.device, dtype=torch.float32)
        return ids.expand(z_t.shape[0], -1)

    def unet_kwargs(self, z_t: torch.Tensor, conditioning: PromptConditioning) -> dict[str, Any]:
        """The UNet's conditioning arguments for latents z_t: ``encoder_hidden_states`` and,
        on SDXL, ``added_cond_kwargs`` (pooled ``text_embeds`` and ``time_ids``)."""
        dtype = self.base.unet.dtype
        kwargs: dict[str, Any] = {"encoder_hidden_states": conditioning.hidden.to(dtype)}
        if conditioning.pooled is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": conditioning.pooled.to(dtype),
                "time_ids": self.time_ids(z_t).to(dtype),
            }
        return kwargs

    def predict_noise(
        self, z_t: torch.Tensor, t: torch.Tensor, conditioning: PromptConditioning
    ) -> torch.Tensor:
        """The UNet's output (ε or v, as the scheduler says) on (z_t, t, a prompt's
        conditioning): (B, 4, h, w)."""
        return self.base.unet(z_t, t, **self.unet_kwargs(z_t, conditioning)).sample

    def empty_prompt_embedding(self, batch: int) -> PromptConditioning:
        """The empty prompt's conditioning, ``batch`` rows (computed once)."""
        if self._empty_prompt is None:
            with torch.no_grad():
                self._empty_prompt = self.condition([""])
        return self._empty_prompt.expand(batch)

    # ------------------------------------------------------------------ image side

    def clip_cls(self, clip_pixel_values: torch.Tensor) -> torch.Tensor:
        """The [CLS] tokens the encoder reads: (B, 3, S, S) → (B, L, C)."""
        out = self.image_encoder(
            clip_pixel_values.to(self.base.device, self.image_encoder.dtype),
            output_hidden_states=True,
        )
        return self.encoder.select_cls(out.hidden_states)

    @torch.no_grad()
    def unet_block_outputs(self, z_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Down- and mid-block outputs of the base UNet on (z_t, t, empty prompt).

        Captured by forward hooks; the forward stops after the mid block (no up path).
        While compiling, the same blocks called in order (hooks do not trace).
        """
        captured: list[torch.Tensor] = []
        unet = self.base.unet
        if torch.compiler.is_compiling():
            concepts_off = self.concepts.disabled() if self.concepts is not None else nullcontext()
            with self.offsets.disabled(), concepts_off:
                if self.concepts is not None:
                    self.concepts.refresh()  # what the UNet's pre-hook does
                z = z_t.to(unet.dtype)
                kwargs = self.unet_kwargs(z, self.empty_prompt_embedding(z_t.shape[0]))
                return down_and_mid_outputs(unet, z, t, **kwargs)

        def grab(module: nn.Module, inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        def grab_and_stop(module: nn.Module, inputs: Any, output: Any) -> None:
            grab(module, inputs, output)
            raise _StopForward

        handles = [b.register_forward_hook(grab) for b in unet.down_blocks]
        handles.append(unet.mid_block.register_forward_hook(grab_and_stop))
        stopped = False
        try:
            # the base UNet: domain offsets AND concept deltas off, as the encoder saw it in
            # pretraining
            concepts_off = self.concepts.disabled() if self.concepts is not None else nullcontext()
            with self.offsets.disabled(), concepts_off:
                z = z_t.to(unet.dtype)
                unet(z, t, **self.unet_kwargs(z, self.empty_prompt_embedding(z_t.shape[0])))
        except _StopForward:
            stopped = True
        finally:
            for handle in handles:
                handle.remove()
        assert stopped, "the UNet never reached its mid block"
        return captured

    def predict_offset(self, cls: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E(x, z_t, t): CLIP [CLS] tokens (B, L, C), noisy latents, timesteps → (B, D).

        With concepts attached, each sample's concept supplies the output layer; a bank whose
        output layer is zero and frozen (Textual Inversion) skips the encoder: zeros.
        """
        if self.concepts is not None and not self.concepts.use_encoder:
            width = self.encoder.output_layer.out_features
            return torch.zeros(z_t.shape[0], width, device=z_t.device, dtype=torch.float32)
        hidden = self.encoder.hidden(
            self.encoder.clip_features(cls), self.unet_block_outputs(z_t, t)
        )
        if self.concepts is not None:
            return self.concepts.head(hidden)
        return self.encoder.output_layer(hidden)

    def word_embedding(self, offset: torch.Tensor) -> torch.Tensor:
        """v* = e(class_word) + s · E (+ the concept's own correction), (B, D)."""
        v_star = self.class_embedding().to(offset.dtype) + self.config.embedding_scale * offset
        if self.concepts is not None:
            v_star = v_star + self.concepts.word_for(offset.shape[0], offset.device)
        return v_star

    # ------------------------------------------------------------------ parameters

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.offsets.parameters()

    def set_trainable(self, parts: list[str]) -> list[nn.Parameter]:
        """Train ``parts`` (``encoder``, ``offsets``, ``clip``); freeze everything else.

        ``clip`` unfreezes only what the encoder reads (the embeddings and the layers up to
        the deepest one it takes a [CLS] token from): the tower's final norm and projection
        never get a gradient, and DDP (``find_unused_parameters=False``) would fail on them.
        A half-precision tower is made fp32 first, so the optimizer's updates are not
        rounded away (autocast still computes in bf16 on a GPU)."""
        unknown = set(parts) - {"encoder", "offsets", "clip"}
        if unknown:
            raise ValueError(f"unknown trainable parts {sorted(unknown)}: encoder, offsets, clip")
        self.encoder.requires_grad_("encoder" in parts)
        self.offsets.requires_grad_("offsets" in parts)
        self.image_encoder.requires_grad_(False)
        if "clip" in parts:
            if self.image_encoder.dtype != torch.float32:
                self.image_encoder.float()  # fp32 master weights
            for module in self.clip_read_modules():
                module.requires_grad_(True)
            self.clip_trained = True
        return [p for p in self.parameters() if p.requires_grad]

    def clip_read_modules(self) -> list[nn.Module]:
        """The parts of the CLIP tower the encoder's [CLS] tokens depend on."""
        vision = self.image_encoder.vision_model
        deepest = max(self.encoder.layer_indices)  # hidden_states[i] = output of layer i
        return [vision.embeddings, vision.pre_layrnorm, *vision.encoder.layers[:deepest]]

    def clip_state(self) -> dict[str, torch.Tensor]:
        """The trainable part of the CLIP tower, by ``image_encoder`` state-dict name."""
        read = {id(p) for m in self.clip_read_modules() for p in m.parameters()}
        return {n: p for n, p in self.image_encoder.named_parameters() if id(p) in read}

    def fingerprint(self) -> str:
        """Names a domain model version as loaded, the thing a concept is bound to: a hash of
        the encoder + offsets weights (+ the CLIP tower when it was trained), the frozen
        base's identity (:func:`base_identity`: its files' content digests, computed once per
        model) and the dtype the base runs in. Two domain models with equal encoder and
        offsets on different bases (or dtypes) differ."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self._trained_state().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        if self._base_identity is None:
            self._base_identity = base_identity(self.base, self.config)
        digest.update(f"base:{self._base_identity}".encode())
        digest.update(f"dtype:{str(self.base.dtype).removeprefix('torch.')}".encode())
        return digest.hexdigest()[:16]

    def _trained_state(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"offsets.{k}": v for k, v in self.offsets.state_dict().items()})
        if self.clip_trained:
            state.update({f"clip.{k}": v for k, v in self.clip_state().items()})
        return state

    # ------------------------------------------------------------------ domain model I/O

    def save_pretrained(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out / "encoder", safe_serialization=True)
        self.offsets.save_pretrained(out / "offsets", safe_serialization=True)
        if self.clip_trained:  # the tuned CLIP layers travel with the model, fp32 as trained
            (out / "clip").mkdir(exist_ok=True)
            save_file(
                {
                    k: v.detach().to("cpu", torch.float32).contiguous()
                    for k, v in self.clip_state().items()
                },
                str(out / "clip" / CLIP_TENSORS),
            )
        meta = {"model": self.config.model_dump(mode="json"), "fingerprint": self.fingerprint()}
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return out

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        base: BaseModels | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> E4TModel:
        """Load a domain model; ``overrides`` may move it (``device``, ``dtype``, base model)."""
        folder = Path(folder)
        meta_path = folder / CONFIG_NAME
        if not meta_path.exists():
            raise ArtifactError(f"{folder} is not an E4T domain model ({CONFIG_NAME} missing)")
        meta = json.loads(meta_path.read_text())
        config = ModelConfig.model_validate({**meta["model"], **(overrides or {})})
        model = cls.from_config(config, base=base, seed=None)
        for name, module in (("encoder", model.encoder), ("offsets", model.offsets)):
            path = folder / name / "diffusion_pytorch_model.safetensors"
            tensors = read_safetensors(path)
            check_tensors(path, tensors, {k: v.shape for k, v in module.state_dict().items()})
            module.load_state_dict(tensors)
        clip_path = folder / "clip" / CLIP_TENSORS
        if clip_path.exists():
            tensors = read_safetensors(clip_path)
            model.image_encoder.float()  # the trained layers are fp32, as they were trained
            check_tensors(clip_path, tensors, {k: v.shape for k, v in model.clip_state().items()})
            with torch.no_grad():
                for name, value in model.clip_state().items():
                    value.copy_(tensors[name])
            model.clip_trained = True
        return model

    # ------------------------------------------------------------------ concepts

    def new_concepts(
        self, cls: torch.Tensor, rank: int = 4, seeds: list[int] | None = None
    ) -> ConceptBank:
        """Fresh (0-step) state for K concepts from their [CLS] tokens (K, L, C)."""
        layer = self.encoder.output_layer
        return ConceptBank(
            cls.to(self.base.device, torch.float32),
            layer.weight,
            layer.bias,
            self.projection_groups(),
            rank,
            seeds,
        ).to(self.base.device)

    def projection_groups(self) -> list[ProjectionGroup]:
        """The fused groups of the projections concept deltas act on (the offsets')."""
        if self._groups is None:
            self._groups = group_projections(self.base.unet, self.offsets.paths)
        return self._groups

    def attach_concepts(self, bank: ConceptBank) -> ConceptBank:
        """Apply a bank's concepts: batches are then K equal groups, one per concept."""
        self.detach_concepts()
        self.concepts = bank.to(self.base.device).attach(self.base.unet, self.offsets)
        return bank

    def detach_concepts(self) -> None:
        if self.concepts is not None:
            self.concepts.detach()
        self.concepts = None

    def invalidate_concepts(self) -> None:
        """After changing the UNet's or the offsets' weights in place: the attached bank
        rebuilds its cached weight stacks (:meth:`ConceptBank.invalidate`)."""
        if self.concepts is not None:
            self.concepts.invalidate()

    def save_concept(
        self,
        out_dir: str | Path,
        cls: torch.Tensor,
        dtype: str = "fp16",
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write a 0-step concept (the domain model's own prediction) for [CLS] tokens cls."""
        bank = self.new_concepts(cls.reshape(1, *cls.shape[-2:]))
        bank.save(0, out_dir, self.concept_meta(extra), dtype)
        return Path(out_dir)

    def concept_meta(
        self, extra: dict[str, Any] | None = None, fingerprint: str | None = None
    ) -> dict[str, Any]:
        """A concept's ``concept.json``; ``fingerprint``: this model's, when the caller has
        it already (hashing every encoder and offset weight is not free on SD 1.5)."""
        return {
            "class_word": self.config.class_word,
            "placeholder_token": self.config.placeholder_token,
            "domain_fingerprint": fingerprint or self.fingerprint(),
            **(extra or {}),
        }

    def read_concept(
        self,
        folder: str | Path,
        allow_model_mismatch: bool = False,
        model_fingerprint: str | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A concept's tensors and metadata, checked against this model: a concept tuned
        against another domain model (fingerprint) is refused unless ``allow_model_mismatch``
        (:func:`check_concept_binding`); ``model_fingerprint``: this model's, when the caller
        has it already."""
        folder = Path(folder)
        meta = read_concept_meta(folder)  # values checked before anything else reads them
        if meta.get("class_word") != self.config.class_word:
            raise ArtifactError(
                f"{folder} was tuned for class word {meta.get('class_word')!r}, "
                f"this model uses {self.config.class_word!r}"
            )
        path = folder / CONCEPT_TENSORS
        tensors = read_safetensors(path)
        layer = self.encoder.output_layer
        rank = int(meta.get("rank", 4))
        expected = {
            "image.clip_cls": torch.Size(
                (len(self.encoder.layer_indices), self.encoder.config.clip_hidden_size)
            ),
            "word": torch.Size((layer.out_features,)),
            "head.weight": layer.weight.shape,
            "head.bias": layer.bias.shape,
        }
        for p in self.offsets.paths:
            out_f, in_f = self.offsets.config.shapes[p]
            expected[f"delta.{p}.down"] = torch.Size((rank, in_f))
            expected[f"delta.{p}.up"] = torch.Size((out_f, rank))
        check_tensors(path, tensors, expected)
        check_finite_float(path, tensors)
        # last: a concept of another architecture gets the more telling shape error above
        check_concept_binding(
            meta, model_fingerprint or self.fingerprint(), folder, allow_model_mismatch
        )
        return tensors, meta

    def load_concepts(
        self, folders: list[str | Path], allow_model_mismatch: bool = False
    ) -> ConceptBank:
        """Load and attach K concepts; returns their bank (its ``cls`` are the images')."""
        fingerprint = self.fingerprint()
        read = [self.read_concept(f, allow_model_mismatch, fingerprint) for f in folders]
        ranks = {int(meta.get("rank", 4)) for _, meta in read}
        if len(ranks) != 1:
            raise ArtifactError(f"concepts of different ranks {sorted(ranks)} cannot share a pass")
        bank = ConceptBank.from_tensors(
            [t for t, _ in read], ranks.pop(), self.base.device, self.projection_groups()
        )
        return self.attach_concepts(bank)

    def load_concept(self, folder: str | Path, allow_model_mismatch: bool = False) -> torch.Tensor:
        """Load and attach one concept; returns its [CLS] tokens (1, L, C)."""
        bank = self.load_concepts([folder], allow_model_mismatch)
        return bank.cls.to(self.image_encoder.dtype)
