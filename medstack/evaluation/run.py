"""One external evaluation from start to end, as ``medstack evaluate`` runs it (the flow runs the same steps as
tasks): load the bundle, read and match the labelled data, check the output folder, score, judge, write.

Every check that can fail on the user's input (the model reference, the data's classes and labels, the output
folder) runs before any image is scored; an npz of another image size fails at the first batch, before any model
is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medstack.evaluation.folder import DEFAULT_OUTPUT_DIR, new_evaluation_id, save_evaluation
from medstack.evaluation.labelled import read_labelled
from medstack.evaluation.measures import run_settings
from medstack.evaluation.score import score_labelled


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate and how: the CLI's flags and the flow's parameters."""

    model: str
    data: str
    registry: str | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    use: str | None = None
    class_names: Sequence[str] | None = None
    engine: str = "fused"
    batch_size: int = 256
    on_bad_image: str = "error"
    bootstrap: int | None = None  # None: the run's own report.bootstrap
    recalibrate: float | None = None  # the fitting fraction; None: nothing refitted
    seed: int | None = None  # the recalibration split's seed; None: the run's seed


def run_evaluation(request: EvaluationRequest) -> tuple[Path, dict[str, Any]]:
    """Evaluate and write the folder; returns (the folder, ``evaluation.json``'s content)."""
    from medstack.evaluation.evaluate import evaluate_scored
    from medstack.inference.bundle import load_bundle
    from medstack.models.decision import apply_decision
    from medstack.outputs import check_output_dir

    bundle = load_bundle(request.model, request.registry)
    model = bundle.model_for(request.use, request.engine)
    data = read_labelled(request.data, bundle.classes, request.class_names)
    settings = run_settings(bundle.root, bundle.classes, request.bootstrap)
    check_output_dir(request.output_dir)
    scored = score_labelled(bundle, data, engine=request.engine, batch_size=request.batch_size,
                            on_bad_image=request.on_bad_image)
    evaluation = evaluate_scored(bundle, data, scored, settings, model=model,
                                 evaluation_id=new_evaluation_id(data.source), recalibrate=request.recalibrate,
                                 recalibrate_seed=request.seed)
    labels = apply_decision(scored.probas[model], bundle.decision(model))
    folder = save_evaluation(request.output_dir, evaluation, scored, labels, bundle.trust(model, scored.probas[model]))
    return folder, evaluation


def summary_lines(folder: Path, evaluation: dict[str, Any]) -> list[str]:
    """What the terminal shows at the end: the chosen model's headline figures beside the run's, and the folder."""
    from medstack.report_text import format_number

    chosen = evaluation["model"]["chosen"]
    result = evaluation["models"][chosen]
    ext, ref = result["external"], result.get("run_test") or {}
    lines = [f"evaluated {evaluation['data']['images']:,} image(s) of {evaluation['data']['source']} with "
             f"{evaluation['model']['source']} (run {evaluation['model']['run_id']}), model {chosen}"]
    for key in ("roc_auc", "balanced_accuracy"):
        ci = ext["ci"].get(key)
        interval = f" [{format_number(ci[0])}, {format_number(ci[1])}]" if ci else ""
        theirs = format_number((ref.get("metrics") or {}).get(key))
        lines.append(f"  {key}: {format_number(ext['metrics'].get(key))}{interval} (run's test split {theirs})")
    cal = ext["calibration"]
    lines.append(f"  ECE: {format_number(cal['ece'])} (run's test split "
                 f"{format_number((ref.get('calibration') or {}).get('ece'))})")
    trust = ext["trust"]
    if trust["available"]:
        from medstack.evaluation.trust import lost_classes

        for level, lost in lost_classes(trust["conformal"]["levels"]).items():
            lines.append(f"  coverage at {level:.0%}: " + (f"lost for {', '.join(lost)} (interval below the level)"
                                                           if lost else "no class significantly below the level"))
        theirs = ((ref.get("trust") or {}).get("referral") or {}).get("test", {}).get("referred")
        lines.append(f"  referred: {trust['referral']['test']['referred']:.1%}"
                     + (f" (run's test split {theirs:.1%})" if theirs is not None else ""))
    else:
        lines.append(f"  {trust['note']}")
    drift = evaluation["drift"]
    lines.append(f"  drift warnings: {drift['warned']:,} of {drift['images']:,} image(s)")
    return lines + [f"evaluation folder: {folder}"]
