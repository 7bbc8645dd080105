"""The MLflow pyfunc of a domain model, logged as code (models-from-code: nothing pickled).

``predict`` takes a DataFrame with columns ``image`` (a path, or base64 of PNG/JPEG
bytes) and ``prompt`` (``{}`` = the person), optional ``seed``; params ``num_steps``,
``guidance_scale``. It personalizes from the image and returns the generated images as
base64 PNG. (Personalization here is the encoder's prediction; few-step tuning is the
``personalize-bulk`` stage.)
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def _image_bytes(source: str) -> bytes:
    """A path to an image, or the image's bytes in base64."""
    if len(source) < 1024 and "\n" not in source and Path(source).is_file():
        return Path(source).read_bytes()
    return base64.b64decode(source)


class E4TPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from e4t.models.e4t_model import E4TModel

        overrides = {"device": os.environ.get("E4T_DEVICE", "cpu")}
        if "base_model" in context.artifacts:
            overrides["base_model"] = context.artifacts["base_model"]
        self.model = E4TModel.from_pretrained(
            context.artifacts["domain_model"], overrides=overrides
        )

    def predict(self, context, model_input, params=None):
        # (no type hints: MLflow would read them as a schema)
        import pandas as pd
        from PIL import Image

        from e4t.generation import GenerationConfig, clip_pixels, generate

        params = params or {}
        config = GenerationConfig(
            num_steps=int(params.get("num_steps", 30)),
            guidance_scale=float(params.get("guidance_scale", 7.5)),
            batch_size=1,
        )
        rows = []
        for record in model_input.to_dict(orient="records"):
            source = str(record["image"])
            data = _image_bytes(source)
            image = Image.open(io.BytesIO(data)).convert("RGB")
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
