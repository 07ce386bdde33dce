"""The MLflow model medstack registers, defined in code (MLflow's "models from code"; no pickled object).

MLflow runs this file whenever it loads a medstack model (``mlflow.pyfunc.load_model("models:/<name>@<alias>")``,
``mlflow models serve``): the model loads its bundle (the run folder, an artifact of the model) through medstack's own
loader and scores images like ``medstack predict``. It therefore needs medstack, with its TensorFlow, installed where
it loads: use ``env_manager="local"`` (docs/mlflow.md). Imported as a module of medstack (its layout checks import
every module), it does nothing: the model is only defined and set when MLflow executes the file under a name of its
own, which also keeps mlflow unimported without the extra.
"""

if __name__ != "medstack.tracking.bundle_model":
    import mlflow.models
    import numpy as np
    from mlflow.pyfunc import PythonModel

    from medstack.tracking.pyfunc import BundlePredictor
    from medstack.tracking.registry import BUNDLE_ARTIFACT

    class BundleModel(PythonModel):
        """A medstack bundle as an MLflow pyfunc: images (N, H, W, C) in, one row per image out; ``params``
        may name the model to use (``{"model": "stacking"}``; default: the run's recommended model)."""

        def load_context(self, context):
            self.predictor = BundlePredictor(context.artifacts[BUNDLE_ARTIFACT])

        # The ndarray hint is one MLflow accepts without inferring a schema from it: it validates nothing, and
        # MLflow stops warning on every log and load that the method has no type hints.
        def predict(self, context, model_input: np.ndarray, params=None):
            return self.predictor.predict(model_input, (params or {}).get("model"))

    mlflow.models.set_model(BundleModel())
