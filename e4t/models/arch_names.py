"""The architecture names (``--arch``), in one place: the CLI's choices, the flows' type,
the benchmarks' presets and the builders all read them from here.

Light on purpose (no torch, no pydantic): the CLI builds its parser from it, and
``e4t --help`` stays fast. Adding an architecture means its name in :data:`ArchName` with
its model preset in :data:`MODEL_PRESETS`, and its builder entries in
:mod:`e4t.models.architectures` (``tests/test_cli.py`` checks each name has both).
"""

from __future__ import annotations

from typing import Literal, get_args

ArchName = Literal["tiny", "sd15-random", "tiny-xl", "sdxl-random"]
"""Model architectures with seeded random weights (:mod:`e4t.models.architectures`)."""

ARCH_NAMES: tuple[ArchName, ...] = get_args(ArchName)

#: the model preset (``configs/model/<preset>.yaml``: encoder, offsets) of each architecture
MODEL_PRESETS: dict[ArchName, str] = {
    "tiny": "tiny",
    "sd15-random": "sd15",
    "tiny-xl": "tiny-xl",
    "sdxl-random": "sdxl",
}
