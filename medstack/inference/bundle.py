"""The model bundle: ``model.json`` in every run folder, and the one loader prediction and serving go through.

``model.json`` describes the run folder as a model: classes, the input contract, every member's fold files and
temperatures, every model's decision, the stacking meta-model as plain JSON numbers, the recommended model,
every model's conformal calibration and referral point (``conformal``; absent from bundles written before them),
training-data statistics for the drift guard, the data fingerprint and a metrics summary. Loading it runs no
pickle (``meta_model.joblib`` stays as an export and is never read here); ``.keras`` files load in safe mode after
their sha256 is checked. Every problem is a :class:`BundleError` naming the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import medstack
from medstack.inference.schema import SCHEMA_VERSION, BundleError
from medstack.inference.stacking import JsonStacking
from medstack.inference.stats import training_statistics
from medstack.inference.trust import Trust, read_trust, trust_columns
from medstack.run_folder import (BUNDLE_FILE, HEADLINE_METRICS, STUDENT, STUDENT_FILE, bundle_recommendation,
                                 member_file, read_bundle)

if TYPE_CHECKING:
    import keras

    from medstack.config import RunConfig
    from medstack.pipeline import EnsembleFit, PreparedData


def bundle_record(run_id: str, cfg: RunConfig, prepared: PreparedData, ensembles: EnsembleFit, metrics: dict
                  ) -> dict[str, Any]:
    """The content of ``model.json``: the stacked strategies' fold models are named where the run folder holds them
    (:func:`medstack.run_folder.member_file`), with the sha256 of the cached files linked there."""
    preds = ensembles.predictions
    meta = ensembles.meta_model
    shape = [int(v) for v in prepared.images.shape[1:]]
    binary = len(prepared.class_names) == 2
    members = {
        strategy: {"folds": [{"file": member_file(strategy, fold), "sha256": _sha256(Path(per_fold[fold])),
                              "temperature": preds.fold_info[strategy][k].get("temperature")}
                             for k, fold in enumerate(sorted(per_fold))]}
        for strategy, per_fold in preds.model_paths.items()
        if strategy in meta.model_names_
    }
    return {
        "format": "medstack-bundle",
        "schema_version": SCHEMA_VERSION,
        "medstack_version": medstack.__version__,
        "run_id": run_id,
        "name": cfg.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(prepared.class_names),
        "positive_class": ({"index": int(prepared.positive_class), "name": prepared.class_names[prepared.positive_class]}
                           if binary else None),
        "input": {
            "shape": shape,
            "channels": shape[-1],
            "color_mode": "L" if shape[-1] == 1 else "RGB",
            "dtype": "float32 pixel values 0..255 (uint8 images cast to float)",
            "value_range": [0, 255],
            "decoding": ("medstack.data.images.decode_image(file, (height, width), color_mode): 16-bit images "
                         "mapped to 8 bits by >> 8, palette images via RGBA, PIL convert to the color mode, "
                         "bilinear resize to height x width"),
            "model_image_size": list(cfg.data.image_size) if cfg.data.image_size else None,
            "source": cfg.data.source,
        },
        "members": members,
        "models": [*members, "soft_voting", "stacking", *([STUDENT] if ensembles.student else [])],
        "soft_voting": {"members": list(members), "rule": "unweighted mean of the member probabilities"},
        "stacking": JsonStacking.from_meta_model(meta).to_json(),
        "decisions": {name: metrics["models"][name]["decision"] for name in metrics["models"]},
        "recommended": dict(metrics.get("recommended") or {}),
        "data": {"name": prepared.name, "fingerprint": prepared.fingerprint, "counts": prepared.counts,
                 "source": cfg.data.source},
        **({"conformal": conformal_record(metrics, ensembles)} if ensembles.conformal else {}),
        "student": student_record(ensembles, metrics),
        "training_statistics": training_statistics(prepared.images[prepared.train_idx]),
        "metrics": {name: {split: {k: m[split].get(k) for k in HEADLINE_METRICS if k in m[split]}
                           for split in ("test", "oof") if split in m}  # the student has no OOF
                    for name, m in metrics["models"].items()},
    }


def student_record(ensembles: EnsembleFit, metrics: dict) -> dict[str, Any]:
    """model.json's ``student``: the one-network model's file (with its sha256) and temperature, what it learned
    and from which rows its decision and sets come (metrics.json's ``student``); ``{"trained": false, ...}`` for a
    run without one."""
    if not ensembles.student:
        return dict(metrics.get("student") or {"trained": False})
    info = ensembles.predictions.fold_info[STUDENT][0]
    about = {k: metrics["student"][k] for k in ("trained", "learned", "trained_rows", "decision_rows",
                                                 "calibration_rows", "passes_per_image")}
    return {**about, "file": STUDENT_FILE, "sha256": _sha256(Path(ensembles.student["model_path"])),
            "temperature": info.get("temperature")}


def conformal_record(metrics: dict, ensembles: EnsembleFit) -> dict[str, Any]:
    """model.json's ``conformal``: how the sets were calibrated (metrics.json's ``conformal``) and, per model, its
    calibration (:meth:`~medstack.models.conformal.ConformalCalibration.to_dict`) and referral point."""
    return {**metrics.get("conformal", {}),
            "models": {name: {"calibration": calibration.to_dict(), "referral": ensembles.referral[name]}
                       for name, calibration in ensembles.conformal.items()}}


@dataclass
class Bundle:
    """A loaded ``model.json`` with its folder. Fold models are loaded on demand (:meth:`member_models`)."""

    root: Path
    meta: dict[str, Any]
    stacking: JsonStacking
    source: str  # what the user named: a folder, or <name>@<alias>
    _members: dict[str, list[keras.Model]] | None = field(default=None, repr=False)
    _student: keras.Model | None = field(default=None, repr=False)
    _trust: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict, repr=False)  # read_trust per model
    _built: dict[str, Any] = field(default_factory=dict, repr=False)  # what once() built, by key

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input"]["shape"])

    @property
    def color_mode(self) -> str:
        return self.meta["input"]["color_mode"]

    @property
    def strategies(self) -> list[str]:
        return list(self.meta["members"])

    @property
    def models(self) -> list[str]:
        return list(self.meta["models"])

    @property
    def recommended(self) -> str:
        """The model predictions use unless told otherwise (:func:`medstack.run_folder.recommended_model`)."""
        model, _ = bundle_recommendation(self.meta)
        if model is None:
            raise BundleError(f"{self.root / BUNDLE_FILE}: recommends no model and none has a test ROC AUC; "
                              f"name one of {self.models}")
        return model

    def decision(self, model: str) -> dict[str, Any]:
        return self.meta["decisions"][model]

    def trust(self, model: str, proba: np.ndarray) -> Trust | None:
        """``model``'s prediction sets, p-values and referral for its probabilities ``proba``
        (:func:`medstack.inference.trust.trust_columns`); None for a bundle without conformal calibration."""
        calibration, point = self._trust.get(model, (None, None))
        return trust_columns(calibration, point, self.classes, proba)

    @property
    def has_trust(self) -> bool:
        """Whether model.json carries conformal calibration (bundles from before it do not)."""
        return isinstance(self.meta.get("conformal"), dict)

    def model_for(self, use: str | None, engine: str = "fused") -> str:
        """The model whose labels a command outputs: ``use``, else the recommended one; the student under
        ``--engine student``, which computes nothing else."""
        if engine != STUDENT:
            return self.check_model_name(use or self.recommended)
        self._require_student()  # before anything loads
        if use not in (None, STUDENT):
            raise BundleError(f"--engine student scores only the student, not {use!r}: drop --use, or score "
                              f"{use} with --engine fused")
        return STUDENT

    def check_model_name(self, model: str) -> str:
        if model not in self.models:
            raise BundleError(f"{self.root / BUNDLE_FILE}: no model {model!r}; this bundle has {self.models}")
        return model

    def member_files(self) -> dict[str, list[Path]]:
        return {s: [self.root / f["file"] for f in spec["folds"]] for s, spec in self.meta["members"].items()}

    @property
    def has_student(self) -> bool:
        """Whether the run trained the one-network model (``student``; bundles from before it have none)."""
        return STUDENT in self.models

    def _require_student(self) -> None:
        if not self.has_student:
            raise BundleError(f"{self.root / BUNDLE_FILE}: this run trained no student (distill.enabled was false, "
                              f"or the run is older than it); use the ensemble's models {self.models}")

    def student_model(self) -> keras.Model:
        """The student's network (sha256 checked, Keras safe mode): calibrated logits, like a fold model."""
        self._require_student()
        if self._student is None:
            self._student = _load_keras(self.root, self.meta["student"])
        return self._student

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        """What ``build()`` returns, built on the first call for ``key`` and kept with this loaded bundle (the traced
        graphs of medstack.inference.fused.make_scorer: seconds to build, reused by every later predict)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def member_models(self) -> dict[str, list[keras.Model]]:
        """Every fold model, by strategy, loaded once (sha256 checked, Keras safe mode)."""
        if self._members is None:
            self._members = {s: [_load_keras(self.root, f) for f in spec["folds"]]
                             for s, spec in self.meta["members"].items()}
        return self._members

    def summary(self) -> dict[str, Any]:
        """What a service or a listing shows about this model: no file paths beyond the run folder."""
        keys = ("name", "run_id", "created", "medstack_version", "classes", "positive_class", "input", "models",
                "decisions", "recommended", "metrics")
        return {"bundle": str(self.root), **{k: self.meta.get(k) for k in keys},
                "data_fingerprint": self.meta["data"]["fingerprint"]}


def bundle_folder(ref: str | Path, registry: str | Path | None = None) -> Path:
    """The run folder a reference names now: a run folder, its ``model.json``, ``<name>@<alias>`` (resolved in
    the registry, so the answer changes when the alias is promoted), or ``models:/<name>@<alias>`` (or
    ``models:/<name>/<version>``) in MLflow's registry at $MLFLOW_TRACKING_URI (medstack.tracking.registry)."""
    text = str(ref)
    path = Path(text).expanduser()
    if text.startswith("models:/"):
        from medstack.tracking.registry import registered_bundle

        path = registered_bundle(text)
    elif "@" in text and not path.exists():
        from medstack.inference.registry import resolve

        path = resolve(text, registry)
    if path.is_file() and path.name == BUNDLE_FILE:
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: no such run folder (expected a folder holding {BUNDLE_FILE}, or <name>@<alias>)")
    return path.resolve()


def load_bundle(ref: str | Path, registry: str | Path | None = None) -> Bundle:
    """Load a bundle from a run folder, its ``model.json``, or a registry name ``<name>@<alias>``."""
    path = bundle_folder(ref, registry)
    meta = read_bundle(path)
    try:
        if meta["schema_version"] >= 2 and "inputs" not in meta["stacking"]:
            raise ValueError("schema version 2 names the meta-model's inputs ('inputs'), and this one does not")
        stacking = JsonStacking.from_json(meta["stacking"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / BUNDLE_FILE}: stacking meta-model is malformed: {exc}") from exc
    try:
        trust = {model: read_trust(meta, model) for model in (meta.get("conformal") or {}).get("models", {})}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / BUNDLE_FILE}: conformal calibration is malformed: {exc}") from exc
    return Bundle(root=path, meta=meta, stacking=stacking, source=str(ref), _trust=trust)


def _load_keras(root: Path, spec: dict[str, Any]) -> keras.Model:
    import keras

    import medstack.models.losses  # noqa: F401  registers the losses a nested model's compile config names
    import medstack.models.network  # noqa: F401  registers the view layers and CosineLogits for safe-mode loading
    import medstack.models.recipe  # noqa: F401  registers the custom metric

    path = root / spec["file"]
    if not path.is_file():
        raise BundleError(f"{path}: model file is missing (listed in {root / BUNDLE_FILE})")
    if spec.get("sha256") and _sha256(path) != spec["sha256"]:
        raise BundleError(f"{path}: model file is corrupt or was replaced (sha256 differs from "
                          f"{root / BUNDLE_FILE})")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # zip errors, unknown layers, safe-mode refusals: all mean "cannot use this file"
        raise BundleError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
