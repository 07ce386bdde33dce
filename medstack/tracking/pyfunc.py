"""What the registered MLflow model does, in plain functions: load the bundle through medstack's own loader and
score images as ``medstack predict`` does. ``bundle_model.py`` wraps this in MLflow's ``PythonModel``; nothing here
imports mlflow, so the logic reads (and is tested) without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

class BundlePredictor:
    """A bundle loaded by :func:`medstack.inference.bundle.load_bundle`, scored by the fused model (the engine
    ``medstack predict`` uses), so the registered model's probabilities are the bundle's."""

    def __init__(self, bundle_dir: str | Path):
        from medstack.inference.bundle import load_bundle
        from medstack.inference.fused import make_scorer

        self.bundle = load_bundle(bundle_dir)
        self.scorer = make_scorer(self.bundle)

    def predict(self, images: np.ndarray, model: str | None = None) -> pd.DataFrame:
        """One row per image (N, H, W, C pixel values 0-255, as decoded): ``model`` (default: the recommended one),
        ``predicted`` (its decision: the run's threshold or policy) and ``p(<class>)`` per class."""
        import pandas as pd

        from medstack.models.decision import apply_decision

        model = self.bundle.check_model_name(model or self.bundle.recommended)
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.bundle.input_shape:
            raise ValueError(f"images must be (N, {', '.join(map(str, self.bundle.input_shape))}) pixel arrays, "
                             f"got shape {images.shape}")
        proba = self.scorer(images)[model]
        labels = apply_decision(proba, self.bundle.decision(model))
        frame = pd.DataFrame({"model": model, "predicted": [self.bundle.classes[int(i)] for i in labels]})
        for k, name in enumerate(self.bundle.classes):
            frame[f"p({name})"] = proba[:, k]
        return frame
