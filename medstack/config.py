"""The one validated configuration object of a medstack run.

A YAML file in ``configs/`` is loaded into :class:`RunConfig`; every function downstream receives only the
section it needs. Unknown keys are errors, so a typo fails at the boundary with a message naming the key.
Strategy sections are validated against their parameter schemas in
:data:`medstack.config_sections.STRATEGY_PARAMS`: the config owns every schema and imports nothing of
``medstack.models``, which receives these sections.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from medstack.config_sections import (  # noqa: F401  (re-exported: import every section from medstack.config)
    STRATEGY_PARAMS, AugmentationConfig, CertaintyReferral, ConformalConfig, CosineSchedule, DistillConfig,
    EnsembleConfig, FocalParams, InverseTimeSchedule, LDAMParams, ModelConfig, NoParams, PlateauSchedule, ReportConfig,
    Section, SetReferral, SmoteParams, StrategyParams, TrackingConfig, TrainingConfig,
)
from medstack.errors import BAD_INPUT, MedstackError


class SubsetConfig(Section):
    """Stratified subsample per split (after splitting), for smoke runs. ``None`` keeps the whole split."""

    train: int | None = Field(default=None, ge=2)
    val: int | None = Field(default=None, ge=2)
    test: int | None = Field(default=None, ge=2)


class BreakHisGroups(Section):
    """Patient (slide) id from BreakHis file names ``SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png``.

    ``SOB_B_A-14-22549AB-40-001.png`` belongs to patient ``14-22549AB``; the tumour type is not part of the id,
    so a patient filed under two tumour types stays one group."""

    kind: Literal["breakhis"] = "breakhis"


class FilenameRegexGroups(Section):
    """Group id captured by a regex (``re.search``) from each image's file name or its path below the folder."""

    kind: Literal["filename_regex"] = "filename_regex"
    pattern: str = Field(description="One capture group, or a named group (?P<group>...), holding the group id.")
    match: Literal["name", "relative_path"] = Field(
        default="name", description="Search the file name, or the path relative to data.path (with '/')."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_has_one_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"data.group_by.pattern {value!r} is not a valid regex: {exc}") from exc
        if "group" not in compiled.groupindex and compiled.groups != 1:
            raise ValueError(f"data.group_by.pattern {value!r} must have exactly one capture group or a named group "
                             f"(?P<group>...), it has {compiled.groups} capture groups")
        return value


class CsvGroups(Section):
    """A CSV mapping every image (path relative to data.path, or a unique bare file name) to its group id."""

    kind: Literal["csv"] = "csv"
    path: str = Field(description="CSV file; relative paths resolve from the CWD, like data.path.")
    file_column: str = "file"
    group_column: str = "group"


class NpzGroups(Section):
    """Group ids stored in the npz itself: ``<key>`` (plain npz) or ``{train,val,test}_<key>`` (MedMNIST layout)."""

    kind: Literal["npz_key"] = "npz_key"
    key: str = "groups"


GroupBy = Annotated[Union[BreakHisGroups, FilenameRegexGroups, CsvGroups, NpzGroups], Field(discriminator="kind")]
_GROUP_KINDS_FOR_SOURCE = {"folder": ("breakhis", "filename_regex", "csv"), "npz": ("npz_key",), "digits": ()}


class DataConfig(Section):
    source: Literal["npz", "folder", "digits"] = "npz"
    name: str = Field(default="dataset", description="Dataset name; 'pneumoniamnist' without a path downloads it.")
    path: str | None = Field(default=None, description="npz file or image folder; relative paths resolve from the CWD.")
    image_size: tuple[int, int] | None = Field(
        default=None, description="(height, width) the model sees; None keeps the stored size (npz, digits)."
    )
    channels: Literal[1, 3] | None = Field(default=None, description="Folder images are converted to this; npz keeps its own.")
    class_names: list[str] | None = None
    positive_class: int | None = Field(
        default=None, ge=0, description="Binary tasks: index of the class treated as positive (default: 1)."
    )
    subset: SubsetConfig = SubsetConfig()
    on_bad_image: Literal["error", "skip"] = "error"
    group_by: GroupBy | None = Field(
        default=None,
        description="Keep all images of one group (patient) in one split and one fold; None splits image by image.",
    )

    @field_validator("group_by", mode="before")
    @classmethod
    def _none_means_no_grouping(cls, value: Any) -> Any:
        if value == "none" or (isinstance(value, dict) and value.get("kind") == "none" and len(value) == 1):
            return None
        return value

    @model_validator(mode="after")
    def _check_source(self) -> "DataConfig":
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source is 'folder'")
        if self.source == "folder" and self.image_size is None:
            raise ValueError("data.image_size is required when data.source is 'folder' (images differ in size)")
        allowed = _GROUP_KINDS_FOR_SOURCE[self.source]
        if self.group_by is not None and self.group_by.kind not in allowed:
            hint = {
                "folder": "file names and CSVs give groups for folders: kind breakhis, filename_regex or csv",
                "npz": "an npz has no file names: store the group ids in it and use {kind: npz_key, key: groups}",
                "digits": "digits has no patients or file names to group by",
            }[self.source]
            raise ValueError(f"data.group_by kind {self.group_by.kind!r} does not work with data.source "
                             f"{self.source!r}: {hint}")
        return self


class SplitConfig(Section):
    use_official: bool = Field(default=False, description="Use the dataset's own train/val/test split when it has one.")
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    folds: int = Field(default=5, ge=2, description="K stratified folds on the training split for OOF predictions.")
    seed: int = 42
    duplicates: Literal["group", "report"] = Field(
        default="group",
        description="Exact-duplicate images: keep each group in one split and one fold ('group'), or only count them.",
    )

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value):
            raise ValueError(f"split.fractions must all be > 0, got {list(value)}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split.fractions must sum to 1, got {list(value)} (sum {sum(value):.4f})")
        return value


class DaskConfig(Section):
    """Where ``task_runner: dask`` sends the fold trainings (README "Run on a cluster")."""

    address: str | None = Field(
        default=None,
        description="Scheduler of an existing cluster (tcp://host:8786); None starts a temporary local cluster.",
    )
    n_workers: int = Field(default=2, ge=1, description="Worker processes of the temporary local cluster.")
    threads_per_worker: int = Field(default=1, ge=1, description="Trainings at once per local worker process.")
    gpus_per_training: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        default="auto",
        description="Dask resource 'GPU' each training asks for; auto: 1 when the cluster's workers declare GPU "
        "resources (dask worker --resources GPU=1), else 0.",
    )

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|ucx|inproc)://\S+", value):
            raise ValueError(f"runtime.dask.address must look like tcp://host:8786, got {value!r}")
        return value


class RuntimeConfig(Section):
    task_runner: Literal["threads", "processes", "dask"] = Field(
        default="processes",
        description="Where trainings run: processes (a pool of max_workers worker processes, each with its own "
                    "TensorFlow; the faster on average on 2 CPU cores, docs/benchmarks.md Task runners), threads of "
                    "the flow process (one TensorFlow in memory), or dask (runtime.dask).",
    )
    max_workers: int = Field(default=2, ge=1, description="Parallel trainings (threads and processes runners).")
    dask: DaskConfig = DaskConfig()
    gpu_tag: str = Field(default="gpu", description="Prefect tag on training tasks; a tag concurrency limit caps them.")
    cache_dir: str = ".medstack-cache"
    output_dir: str = "runs"


class RegistryConfig(Section):
    """What a finished run does in the model registry (medstack.inference.registry, or MLflow's)."""

    backend: Literal["json", "mlflow"] = Field(default="json", description=(
        "json: medstack's registry file (registry.path); mlflow: an MLflow model, its alias set by promotion."))
    promote: Literal["manual", "auto"] = Field(
        default="manual",
        description="auto: promote the run to <name>@<alias> when it beats the champion on the shared test split.",
    )
    alias: str = Field(default="champion", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    name: str | None = Field(default=None, description="Registry name; None uses the config's name.")
    path: str | None = Field(default=None, description=(
        "Registry file (relative: to the working directory); None: $MEDSTACK_REGISTRY, else registry.json in "
        "medstack's user data folder (~/.local/share/medstack on Linux), the file every medstack command reads."))
    min_improvement: float = Field(default=0.0, ge=0.0, description="Test ROC AUC gain the candidate needs.")

    @model_validator(mode="after")
    def _path_is_the_json_registry(self) -> "RegistryConfig":
        if self.backend == "mlflow" and self.path is not None:
            raise ValueError("registry.path names a JSON registry file; with registry.backend mlflow the registry "
                             "is MLflow's (tracking.mlflow.uri, else $MLFLOW_TRACKING_URI): leave registry.path out")
        return self


class RunConfig(Section):
    """Everything a run needs. ``strategies`` maps a registered strategy name to its parameters."""

    name: str = "medstack-run"
    seed: int = 42
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    training: TrainingConfig = TrainingConfig()
    strategies: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"ldam": {}, "class_weight": {}, "smote": {}, "custom_loss": {}}
    )
    ensemble: EnsembleConfig = EnsembleConfig()
    conformal: ConformalConfig = ConformalConfig()
    distill: DistillConfig = DistillConfig()
    report: ReportConfig = ReportConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # Not used in any path today (run ids are time-hash-random); checked so it can never become one.
        if not value or value.startswith(".") or any(c in value for c in "/\\") or not value.isprintable():
            raise ValueError(f"name {value!r} is not a plain name: no path separators or control characters, no leading '.'")
        return value

    @field_validator("strategies")
    @classmethod
    def _validate_strategies(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("strategies must name at least one strategy")
        resolved = {}
        for name, params in value.items():
            if name not in STRATEGY_PARAMS:
                raise ValueError(f"unknown strategy {name!r}; registered: {sorted(STRATEGY_PARAMS)}")
            try:
                resolved[name] = STRATEGY_PARAMS[name](**(params or {})).model_dump()
            except ValidationError as exc:
                raise ValueError(f"strategies.{name}: {exc}") from exc
        return resolved

    @model_validator(mode="after")
    def _student_has_a_calibration_slice(self) -> "RunConfig":
        if self.distill.enabled and self.conformal.calibration != "split":
            raise ValueError("distill.enabled needs conformal.calibration: split: the one-network model's decision "
                             "and prediction sets come from the calibration slice (set distill.enabled: false to "
                             "calibrate on OOF predictions without a student)")
        return self

    def strategy_params(self, name: str) -> StrategyParams:
        return STRATEGY_PARAMS[name](**self.strategies[name])


class ConfigError(MedstackError, ValueError):
    """A configuration file that cannot be read or does not validate."""

    exit_code, kind = BAD_INPUT, "config error"

    @property
    def hint(self) -> str | None:  # type: ignore[override]  # only a validation error names key(s) to fix
        if isinstance(self.__cause__, ValidationError):
            return "fix the key(s) named above; `medstack check-config --config FILE` checks a config without training"
        return None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted-key ``overrides`` (e.g. ``{"data.path": "x.npz"}``) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config:\n{exc}") from exc


def apply_overrides(config: RunConfig, overrides: dict[str, Any] | None) -> RunConfig:
    """A new config with dotted-key ``overrides`` applied (``{"training.epochs": 2}``), validated again.

    Each value replaces what is at its path wholesale (``{"strategies": {"ldam": {}}}`` leaves only LDAM).
    This is how ``prefect deployment run --param overrides=...`` changes single fields of a deployment's config:
    Prefect merges run parameters into deployment parameters only at the top level.
    """
    if not overrides:
        return config
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
        raise ConfigError(f"overrides must map dotted config keys to values, got {overrides!r}")
    raw = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid overrides {sorted(overrides)}:\n{exc}") from exc


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
    tree[leaf] = value


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config (defaults filled in) as YAML, round-trippable through :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def stable_hash(*parts: Any) -> str:
    """A short, order-sensitive sha256 of JSON-serialisable parts (used for cache keys and run ids)."""
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def array_sha(*arrays: np.ndarray) -> str:
    """Full sha256 of arrays' dtypes, shapes and bytes (so [1, 2] + [3] and [1] + [2, 3] differ)."""
    digest = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()
