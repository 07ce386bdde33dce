"""Where medstack logs to MLflow: the rule that turns a config (and the environment) into a tracking target.

MLflow is asked for when the config has ``tracking.mlflow``, when ``$MLFLOW_TRACKING_URI`` is set, or when
``registry.backend`` is ``mlflow``. The URI is ``tracking.mlflow.uri``, else ``$MLFLOW_TRACKING_URI``, else
medstack's own store: a SQLite file at one absolute path, whatever the working directory
(:func:`default_store`), its artifacts in a folder beside it. MLflow's own default (``./mlruns`` or
``./mlflow.db``) would follow the working directory, so a run and a later ``medstack predict`` started elsewhere
would not meet.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medstack.errors import UsageError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from medstack.config import RunConfig

EXTRA = 'pip install -e ".[mlflow]"'
URI_ENV = "MLFLOW_TRACKING_URI"


class MlflowMissing(UsageError, ImportError):
    """MLflow was asked for (config or environment) and the ``mlflow`` extra is not installed: exit 2."""


@dataclass(frozen=True)
class MlflowTarget:
    """Where a run is logged: tracking (and registry) URI, experiment name, and the artifact location given to an
    experiment medstack creates (None: the tracking server's choice)."""

    uri: str
    experiment: str
    artifact_location: str | None


def require_mlflow(why: str) -> None:
    """Raise :class:`MlflowMissing` (saying ``why`` MLflow is needed) unless mlflow can be imported."""
    if importlib.util.find_spec("mlflow") is None:
        raise MlflowMissing(f"{why} needs MLflow, which is not installed: install medstack's mlflow extra "
                            f"({EXTRA}, or pip install 'medstack[mlflow]')")


def wants_mlflow(cfg: RunConfig) -> str | None:
    """Why a run of ``cfg`` logs to MLflow (the words an error names), or None when it does not."""
    if cfg.tracking.mlflow is not None:
        return "tracking.mlflow in the config"
    if cfg.registry.backend == "mlflow":
        return "registry.backend: mlflow in the config"
    if os.environ.get(URI_ENV):
        return f"${URI_ENV} (set in the environment)"
    return None


def mlflow_target(cfg: RunConfig) -> MlflowTarget | None:
    """The tracking target of a run of ``cfg`` (see the module's rule), or None when MLflow is not asked for."""
    if wants_mlflow(cfg) is None:
        return None
    section = cfg.tracking.mlflow
    uri = (section.uri if section else None) or tracking_uri()
    location = (section.artifact_location if section else None) or artifacts_beside(uri)
    return MlflowTarget(uri=uri, experiment=(section.experiment if section else None) or cfg.name,
                        artifact_location=location)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else medstack's default store (what ``models:/`` references resolve against)."""
    return os.environ.get(URI_ENV) or f"sqlite:///{default_store().as_posix()}"


def default_store() -> Path:
    """medstack's MLflow database: ``mlflow/mlflow.db`` in medstack's user data folder (Linux:
    ``$XDG_DATA_HOME/medstack``, by default ``~/.local/share/medstack``), beside the JSON registry."""
    import platformdirs

    return platformdirs.user_data_path("medstack") / "mlflow" / "mlflow.db"


def artifacts_beside(uri: str) -> str | None:
    """For a SQLite store, an ``artifacts`` folder beside the database (absolute, as a file URI); else None, so a
    tracking server keeps its own ``--default-artifact-root`` and a file store its own layout."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.is_absolute():  # sqlite:///rel.db is relative to the working directory: pin it now
        database = database.absolute()
    return (database.parent / "artifacts").as_uri()


def client(uri: str) -> MlflowClient:
    """An MLflow client for ``uri`` (tracking and registry): no process-wide tracking URI or active run is set.
    A SQLite store's folder is made first (SQLite creates the file, not its folder)."""
    require_mlflow(f"MLflow tracking at {uri}")
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).absolute().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow: MlflowClient, target: MlflowTarget) -> str:
    """The id of ``target``'s experiment, created (with its artifact location) when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except MlflowException:  # another run created it meanwhile
        found = mlflow.get_experiment_by_name(target.experiment)
        if found is None:
            raise
        return found.experiment_id


def run_url(uri: str, experiment: str, run_id: str) -> str | None:
    """The MLflow UI page of a run when ``uri`` is a tracking server; None for a local store (no UI address)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
