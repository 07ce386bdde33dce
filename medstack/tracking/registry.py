"""The MLflow model registry as medstack's registry (``registry.backend: mlflow``), and ``models:/`` references.

A run's bundle is logged as an MLflow model (``bundle_model.py``, defined in code, the run folder as its artifact)
in the run's MLflow run and registered as a new version of ``registry.name`` (else the config's name). Promotion
sets the alias (``registry.alias``, by default ``champion``) by the same rule and evidence as the JSON registry
(:func:`medstack.inference.promotion.judge_candidate`); what it decided is recorded as tags on the candidate's
version. :func:`registered_bundle` turns ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``) into a local
bundle folder, for every command that loads a bundle (:func:`medstack.inference.bundle.bundle_folder`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.inference.promotion import judge_candidate
from medstack.inference.registry import RegistryError
from medstack.run_folder import read_bundle
from medstack.tracking.store import client, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from medstack.config import RunConfig
    from medstack.tracking.runs import TrackedRun

MODEL_ARTIFACT = "model"  # where the model lies among its MLflow run's artifacts
BUNDLE_ARTIFACT = "bundle"  # the model's artifact holding the run folder (model.json and the fold models)
CODE_FILE = Path(__file__).with_name("bundle_model.py")  # the model, defined in code (MLflow "models from code")
PREFIX = "models:/"
_REF = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9][A-Za-z0-9._-]*)|/(?P<version>\d+))")


def register_bundle(tracked: TrackedRun, run_dir: str | Path, name: str) -> str:
    """Log ``run_dir`` as an MLflow model in the MLflow run ``tracked`` and register it as a new version of
    ``name``; returns the version."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    import medstack

    run_dir = Path(run_dir).resolve()
    meta = read_bundle(run_dir)
    mlflow_client = client(tracked.uri)
    with tempfile.TemporaryDirectory(prefix="medstack-mlflow-model-") as scratch, warnings.catch_warnings():
        # no input example: the signature is explicit, and an example would load TensorFlow and the model here
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        local = Path(scratch) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            str(local), python_model=str(CODE_FILE), artifacts={BUNDLE_ARTIFACT: str(run_dir)},
            signature=_signature(meta), metadata={"medstack_run_id": meta["run_id"], "env_manager": "local"},
            # medstack itself must be installed where the model loads (env_manager="local"): no pip inference.
            pip_requirements=[f"medstack=={medstack.__version__}", f"mlflow=={mlflow.__version__}"])
        mlflow_client.log_artifacts(tracked.run_id, str(local), MODEL_ARTIFACT)
    try:
        mlflow_client.create_registered_model(name, description="medstack ensembles (model.json bundles)")
    except MlflowException:  # it exists already (or another run created it meanwhile)
        mlflow_client.get_registered_model(name)
    source = f"{mlflow_client.get_run(tracked.run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
    version = mlflow_client.create_model_version(name, source, run_id=tracked.run_id, tags={
        "medstack.run_id": meta["run_id"], "medstack.data_fingerprint": meta["data"]["fingerprint"]})
    return str(version.version)


def promote_version(uri: str, name: str, version: str, run_dir: str | Path, alias: str = "champion",
                    min_improvement: float = 0.0) -> dict[str, Any]:
    """Apply the auto-promotion rule to version ``version`` of ``name`` (its bundle is ``run_dir``) against the
    version ``name@alias`` points at; set the alias when it wins, and tag the version with what was decided."""
    mlflow_client = client(uri)
    champion = _alias_version(mlflow_client, name, alias)
    cand = read_bundle(run_dir)
    if champion is None:
        replace, verdict = True, {"outcome": "promoted", "reason": f"first model registered as {name}@{alias}"}
    else:
        champ_dir = version_bundle(mlflow_client, uri, name, champion.version)
        replace, verdict = judge_candidate(run_dir, cand, champ_dir, read_bundle(champ_dir), min_improvement)
        verdict["champion_version"] = str(champion.version)
    if replace:
        mlflow_client.set_registered_model_alias(name, alias, version)
    for key, value in {"alias": alias, **verdict}.items():
        mlflow_client.set_model_version_tag(name, version, f"medstack.promotion.{key}",
                                            value if isinstance(value, str) else json.dumps(value))
    return {"name": name, "version": version, "alias": alias, **verdict}


def describe_promotion(run_dir: str | Path, cfg: RunConfig) -> str:
    """One line for the terminal: what the auto-promotion did with this run's model version."""
    from medstack.tracking.store import mlflow_target

    target = mlflow_target(cfg)
    name, alias = cfg.registry.name or cfg.name, cfg.registry.alias
    run_id = read_bundle(run_dir)["run_id"]
    mlflow_client = client(target.uri)
    versions = [v for v in mlflow_client.search_model_versions(f"name='{name}'")
                if v.tags.get("medstack.run_id") == run_id]
    if not versions:
        return f"registry: no version of {name} for this run in MLflow at {target.uri}"
    version = versions[0]
    outcome = version.tags.get("medstack.promotion.outcome", "not judged")
    reason = version.tags.get("medstack.promotion.reason", "")
    return f"registry: {name} version {version.version}, {PREFIX}{name}@{alias}: {outcome} ({reason}); MLflow at {target.uri}"


def is_mlflow_ref(ref: str | Path) -> bool:
    return str(ref).startswith(PREFIX)


def registered_bundle(ref: str, uri: str | None = None) -> Path:
    """The local bundle folder of ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` in the MLflow registry
    at ``uri`` (default: $MLFLOW_TRACKING_URI, else medstack's default store), resolved now."""
    match = _REF.fullmatch(ref)
    if match is None:
        raise RegistryError(f"{ref!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    uri = uri or tracking_uri()
    mlflow_client = client(uri)  # MlflowMissing without the extra
    from mlflow.exceptions import MlflowException

    name = match["name"]
    try:
        version = (mlflow_client.get_model_version_by_alias(name, match["alias"]) if match["alias"]
                   else mlflow_client.get_model_version(name, match["version"]))
    except MlflowException as exc:
        raise RegistryError(f"{ref}: not found in the MLflow registry at {uri} ({exc.message})") from exc
    return version_bundle(mlflow_client, uri, name, version.version)


def version_bundle(mlflow_client: MlflowClient, uri: str, name: str, version: str) -> Path:
    """The bundle folder of a model version: in place when its artifacts are local files, else downloaded once into
    medstack's user cache folder (one folder per registry, name and version; versions never change)."""
    import mlflow.artifacts
    import platformdirs

    from medstack.storage import atomic_directory

    source = mlflow_client.get_model_version_download_uri(name, version)
    parsed = urllib.parse.urlparse(source)
    local = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme in ("", "file") else None
    if local is None or not (local / "MLmodel").is_file():
        registry = hashlib.sha256(uri.encode()).hexdigest()[:12]
        local = platformdirs.user_cache_path("medstack") / "mlflow-models" / registry / name / str(version)
        if not (local / "MLmodel").is_file():
            with atomic_directory(local) as tmp:
                # MLflow downloads a folder into dst_path/<its name>: its content becomes the cache entry
                fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                                   tracking_uri=uri))
                if fetched.resolve() != tmp.resolve():
                    for item in fetched.iterdir():
                        item.rename(tmp / item.name)
                    fetched.rmdir()
    return local / _bundle_path(local)


def _bundle_path(model_dir: Path) -> str:
    """Where the bundle artifact lies inside an MLflow model folder, as its MLmodel file records it."""
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    try:
        return mlmodel["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT]["path"]
    except (KeyError, TypeError) as exc:
        raise RegistryError(f"{model_dir}: not a medstack model (no {BUNDLE_ARTIFACT!r} artifact)") from exc


def _alias_version(mlflow_client: MlflowClient, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _signature(meta: dict[str, Any]):
    """Images in (uint8, the bundle's input shape); model, decision and class probabilities out; ``model`` param."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    from medstack.run_folder import bundle_recommendation

    outputs = [ColSpec("string", "model"), ColSpec("string", "predicted"),
               *(ColSpec("double", f"p({name})") for name in meta["classes"])]
    recommended, _ = bundle_recommendation(meta)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *meta["input"]["shape"]))]),
                          outputs=Schema(outputs),
                          params=ParamSchema([ParamSpec("model", "string", recommended or "stacking")]))
