"""The MLflow pyfunc of a domain model, logged as code (models-from-code: nothing pickled).

``predict`` takes a DataFrame with columns ``image`` (base64 of the image's bytes, or a
path under the allowed root) and ``prompt`` (``{}`` = the person), optional ``seed``;
params ``num_steps``, ``guidance_scale``. It personalizes from the image and returns the
generated images as base64 PNG. (Personalization here is the encoder's prediction;
few-step tuning is the ``personalize-bulk`` stage.)

Loading this model runs this file (models-from-code): write access to the MLflow artifact
store is code execution for whoever loads a model from it. ``predict`` itself reads no
file outside ``E4T_PREDICT_ROOT`` (default: the working directory when the model was
loaded; symlinks resolved) and decodes images only within the curation's caps
(``decode.max_bytes``, ``decode.max_pixels``), so a serving endpoint cannot be asked to
read ``/etc/...`` or to decompress a bomb.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

ROOT_ENV = "E4T_PREDICT_ROOT"
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


class PredictInputError(ValueError):
    """An ``image`` value predict refuses: outside the allowed root, too big, not an image."""


def _image_bytes(source: str, root: Path, max_bytes: int) -> bytes:
    """The image's bytes: base64 of an image, or a file under ``root``; never more than
    ``max_bytes`` decoded or read (the cap applies before decoding or reading)."""
    if len(source) > 4 * (max_bytes // 3 + 1) + 4:
        raise PredictInputError(
            f"image refused: too_large (a value of {len(source)} characters decodes to more "
            f"than decode.max_bytes={max_bytes})"
        )
    try:
        data = base64.b64decode(source, validate=True)
        if data.startswith(IMAGE_MAGIC):
            return data
    except (ValueError, TypeError):
        pass
    if len(source) > 4096 or "\x00" in source:
        raise PredictInputError("image is neither base64 of an image nor a path")
    path = Path(source)
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise PredictInputError(
            f"image path {source!r} is outside the allowed root {root} "
            f"(set {ROOT_ENV} on the serving side, or send the image as base64)"
        )
    if not resolved.is_file():
        raise PredictInputError(f"image path {source!r}: no such file under {root}")
    with resolved.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise PredictInputError(
            f"image path {source!r} refused: too_large ({size} bytes > "
            f"decode.max_bytes={max_bytes})"
        )
    return data


def load_image(source: str, root: Path, caps: Any) -> Any:
    """A PIL RGB image from an ``image`` value, within the decode caps."""
    from PIL import Image

    from e4t.data.decode import decode_image

    decoded = decode_image(_image_bytes(source, root, caps.max_bytes), caps)
    if decoded.image is None:
        raise PredictInputError(f"image refused: {decoded.reason} ({decoded.detail})")
    return Image.fromarray(decoded.image)


def _num_steps(value: Any) -> int:
    """params ``num_steps`` as an int in 1..MAX_SAMPLING_STEPS, or a PredictInputError."""
    from e4t.config import MAX_SAMPLING_STEPS

    try:
        steps = int(value)
    except (TypeError, ValueError) as err:
        raise PredictInputError(f"params num_steps={value!r}: not an integer") from err
    if not 1 <= steps <= MAX_SAMPLING_STEPS:
        raise PredictInputError(
            f"params num_steps={steps}: sampling needs 1 to {MAX_SAMPLING_STEPS} steps"
        )
    return steps


class E4TPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from e4t.models.e4t_model import E4TModel

        overrides = {"device": os.environ.get("E4T_DEVICE", "cpu")}
        if "base_model" in context.artifacts:
            overrides["base_model"] = context.artifacts["base_model"]
        self.model = E4TModel.from_pretrained(
            context.artifacts["domain_model"], overrides=overrides
        )
        self.root = Path(os.environ.get(ROOT_ENV) or os.getcwd()).resolve()

    def predict(self, context, model_input, params=None):
        # (no type hints: MLflow would read them as a schema)
        import pandas as pd

        from e4t.config import DecodeConfig
        from e4t.generation import GenerationConfig, clip_pixels, generate

        params = params or {}
        config = GenerationConfig(
            num_steps=_num_steps(params.get("num_steps", 30)),
            guidance_scale=float(params.get("guidance_scale", 7.5)),
            batch_size=1,
        )
        rows = []
        for record in model_input.to_dict(orient="records"):
            image = load_image(str(record["image"]), self.root, DecodeConfig())
            cls = self.model.clip_cls(clip_pixels(self.model, image))
            seed = int(record.get("seed", 0) or 0)
            (item,) = generate(self.model, cls, [str(record["prompt"])], 1, seed, config)
            buf = io.BytesIO()
            item.image.save(buf, format="PNG")
            rows.append(
                {
                    "prompt": item.prompt,
                    "seed": seed,
                    "image": base64.b64encode(buf.getvalue()).decode("ascii"),
                }
            )
        return pd.DataFrame(rows)


set_model(E4TPyfunc())
