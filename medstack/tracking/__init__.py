"""MLflow beside medstack's own records: a run logged as an MLflow run, a bundle registered as an MLflow model.

Optional: the ``mlflow`` extra (``pip install -e ".[mlflow]"``). Only functions of this package import mlflow, and
only when called, so medstack without the extra never imports it; a config that asks for MLflow there gets one
:class:`MlflowMissing` error naming the extra. :mod:`.store` says where (the tracking URI rule and the default
store), :mod:`.runs` logs a finished run folder and its fold trainings, :mod:`.registry` registers, promotes and
resolves ``models:/<name>@<alias>``, and ``bundle_model.py`` is the MLflow model itself, defined in code.
"""
