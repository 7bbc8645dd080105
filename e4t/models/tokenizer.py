"""The real CLIP BPE tokenizer, built from the vocabulary that ships in the open_clip wheel.

``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP's BPE merges, MIT licence) is taken from the
``open_clip_torch`` wheel, fetched once from the package registry with ``pip download
--no-deps`` and cached — installing the package itself would drag in torchvision. From it:
vocab = the 256 byte symbols, the same with ``</w>``, the first 48,894 merges joined,
``<|startoftext|>``, ``<|endoftext|>`` (49,408 entries), written as ``vocab.json`` +
``merges.txt`` and loaded with ``CLIPTokenizer.from_pretrained``.
"""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

from e4t.samples import cache_dir, fetch_from_registry

logger = logging.getLogger(__name__)

OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77


def byte_symbols() -> dict[int, str]:
    """Each byte → a printable unicode character (bytes that print stay themselves)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_bpe_path() -> Path:
    """The cached BPE file; fetched from the registry on first use."""
    target = cache_dir() / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if target.exists():
        return target
    wheel_path = fetch_from_registry(
        OPEN_CLIP_WHEEL, cache_dir() / "clip" / "wheel", "open_clip_torch-*.whl", sdist=False
    )
    with zipfile.ZipFile(wheel_path) as wheel:
        data = wheel.read(BPE_MEMBER)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def write_clip_tokenizer(
    out_dir: str | Path, bpe_path: str | Path | None = None, pad_token: str = "<|endoftext|>"
) -> Path:
    """Write a complete CLIPTokenizer folder (vocab.json, merges.txt, configs).

    pad_token: ``<|endoftext|>`` (OpenAI CLIP, SD 1.x, SDXL's first tokenizer) or ``!``
    (OpenCLIP, SDXL's ``tokenizer_2``, which pads with id 0)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_path or clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    (out / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False)
    )
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
            }
        )
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MODEL_MAX_LENGTH,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
                "do_lower_case": True,
                "errors": "replace",
            }
        )
    )
    return out
