"""The auto-promotion rule of a scheduled retrain (``registry.promote: auto``).

The candidate replaces the champion when its recommended model's ROC AUC on the test split beats the champion's
recommended model's ROC AUC on the SAME test images by more than ``min_improvement``. Why these numbers: in each
run the recommended model and every threshold were chosen on out-of-fold predictions, so OOF figures are biased
upwards by that choice, while the test split chose nothing in either run. Comparing on test is itself a selection
(one of two), and the registry says so in the event, so nobody later reads the promoted model's test figure as an
untouched estimate. The comparison is only meaningful on identical test rows: the runs must share the data
fingerprint (same data, same splits). A candidate trained on other data or other classes is not compared; the
event records that and leaves the champion in place (promote it by hand after looking at both reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.inference.registry import history, promote, read_registry, record_decision, registry_path, resolve
from medstack.run_folder import bundle_recommendation, read_bundle

if TYPE_CHECKING:
    from medstack.config import RunConfig

SELECTION_NOTE = ("compared on the shared test split, which chose nothing inside either run; choosing between "
                  "the two on it is a selection, so the promoted model's test figures are no longer untouched")


def registry_target(cfg: RunConfig) -> tuple[str, Path]:
    """The registry name (``registry.name``, else the config's name) and file (``registry.path`` through the one rule
    of :func:`registry_path`) that a run of ``cfg`` is promoted into."""
    return cfg.registry.name or cfg.name, registry_path(cfg.registry.path)


def promote_run(run_dir: str | Path, cfg: RunConfig) -> tuple[dict[str, Any], Path]:
    """The flow's auto-promotion of ``run_dir`` as ``cfg.registry`` asks; returns the event and the registry file."""
    name, path = registry_target(cfg)
    event = auto_promote(run_dir, alias=cfg.registry.alias, min_improvement=cfg.registry.min_improvement,
                         registry=path, name=name)
    return event, path


def describe_auto_promotion(run_dir: str | Path, cfg: RunConfig) -> str:
    """One line for the terminal: what the auto-promotion did with this run, read back from the registry's history."""
    name, path = registry_target(cfg)
    run_id = read_bundle(run_dir)["run_id"]
    ref = f"{name}@{cfg.registry.alias}"
    events = [e for e in history(name, path) if e["run_id"] == run_id and e.get("alias") == cfg.registry.alias]
    if not events:
        return f"registry: no event for this run under {ref} in {path}"
    event = events[-1]
    if event["event"] == "promote":
        was = f"; was run {event['previous_run_id']}" if event.get("previous_run_id") else ""
        what = f"{ref} -> this run ({event['reason']}{was})"
    else:
        champion = event.get("champion_run_id")
        stays = "this run" if champion == run_id else f"run {champion}"
        what = f"{ref} stays {stays} ({event.get('outcome', event['event'])}: {event['reason']})"
    return f"registry: {what}; recorded in {path}"


def auto_promote(run_dir: str | Path, *, alias: str = "champion", min_improvement: float = 0.0,
                 registry: str | Path | None = None, name: str | None = None) -> dict[str, Any]:
    """Apply the rule for ``run_dir`` against ``<name>@<alias>`` and record what was done; returns the event."""
    run_dir = Path(run_dir)
    cand = read_bundle(run_dir)
    name = name or cand["name"]
    path = registry_path(registry)
    entry = read_registry(path)["models"].get(name, {"aliases": {}})
    if alias not in entry["aliases"]:
        return promote(run_dir, alias, name=name, registry=path, by="medstack auto-promotion",
                       reason=f"first model registered as {name}@{alias}")
    champ_dir = resolve(f"{name}@{alias}", path)
    champ = read_bundle(champ_dir)
    replace, verdict = judge_candidate(run_dir, cand, champ_dir, champ, min_improvement)
    if replace:
        return promote(run_dir, alias, name=name, registry=path, by="medstack auto-promotion",
                       evidence=verdict["evidence"], reason=verdict["reason"])
    base = {"event": "auto-promotion check", "alias": alias, "run_id": cand["run_id"], "champion_run_id": champ["run_id"]}
    return record_decision(name, {**base, **verdict}, path)


def judge_candidate(cand_dir: str | Path, cand: dict, champ_dir: str | Path, champ: dict, min_improvement: float
                    ) -> tuple[bool, dict[str, Any]]:
    """The rule itself, for either registry (this JSON one, or MLflow's: medstack.tracking.registry): whether the
    candidate replaces the champion, and what to record (``outcome``, ``reason``, and ``evidence`` when compared)."""
    if champ["run_id"] == cand["run_id"]:
        return False, {"outcome": "kept", "reason": "the candidate already is the champion"}
    if champ["classes"] != cand["classes"]:
        return False, {"outcome": "not compared",
                       "reason": f"classes differ: champion {champ['classes']}, candidate {cand['classes']}"}
    if champ["data"]["fingerprint"] != cand["data"]["fingerprint"]:
        return False, {"outcome": "not compared", "reason": (
            "trained on different data or splits (data fingerprints differ), so their test splits differ and their "
            "figures are not comparable; promote by hand after reading both reports")}
    evidence = compare_on_test(Path(champ_dir), champ, Path(cand_dir), cand)
    evidence.update(min_improvement=min_improvement, basis=SELECTION_NOTE)
    if evidence["candidate_roc_auc"] - evidence["champion_roc_auc"] > min_improvement:
        return True, {"outcome": "promoted", "evidence": evidence, "reason": (
            f"test ROC AUC {evidence['candidate_roc_auc']:.4f} ({evidence['candidate_model']}) beats "
            f"the champion's {evidence['champion_roc_auc']:.4f} ({evidence['champion_model']}) "
            f"by more than {min_improvement}{_interval(evidence)}")}
    return False, {"outcome": "kept", "evidence": evidence, "reason": (
        f"candidate test ROC AUC {evidence['candidate_roc_auc']:.4f} does not beat the champion's "
        f"{evidence['champion_roc_auc']:.4f} by more than {min_improvement}{_interval(evidence)}")}


def _interval(evidence: dict[str, Any]) -> str:
    """The paired interval of the difference, and whether it holds 0 (a gain or loss the test split cannot show)."""
    if "difference_ci" not in evidence:
        return ""
    low, high = evidence["difference_ci"]
    noise = "holds 0: within test-set noise" if low <= 0 <= high else "excludes 0"
    return f" (difference 95% paired interval {low:+.4f} to {high:+.4f}, {noise})"


def compare_on_test(champ_dir: Path, champ: dict, cand_dir: Path, cand: dict) -> dict[str, Any]:
    """Both runs' recommended models scored on their (identical) test rows, from their test predictions, with the
    paired bootstrap interval of the candidate's ROC AUC minus the champion's (whether the gain is test-set noise)."""
    from medstack.models.metrics import PAIRED_RESAMPLES, compute_metrics
    from medstack.run_comparison import shared_test

    shared = shared_test(champ_dir, cand_dir)
    if shared is None:
        raise ValueError(f"{champ_dir} and {cand_dir} share a data fingerprint but not their test rows")
    chosen = {}
    out: dict[str, Any] = {"test_rows": int(len(shared.labels))}
    for role, meta, probas in (("champion", champ, shared.a), ("candidate", cand, shared.b)):
        model, _ = bundle_recommendation(meta)
        if model is None:
            raise ValueError(f"the {role} run {meta['run_id']} recommends no model and none has a test ROC AUC")
        chosen[role] = model
        auc = compute_metrics(shared.labels, probas[model], None, shared.positive_class)["roc_auc"]
        out[f"{role}_model"], out[f"{role}_roc_auc"] = model, round(float(auc), 6)
    paired = shared.roc_auc_difference(chosen["champion"], chosen["candidate"])
    if paired is None:  # no resample holds every class, or non-finite probabilities: the point figures stand alone
        return out
    out["difference_ci"] = [round(v, 6) for v in paired["ci"]]
    out["difference_ci_method"] = f"paired percentile bootstrap over the shared test rows, {PAIRED_RESAMPLES} resamples, 95%"
    return out
