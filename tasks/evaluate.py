"""External-validation nodes: read and match the labelled data, score it, judge it, write the folder, publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from medstack.evaluation.labelled import LabelledData
from medstack.evaluation.run import EvaluationRequest
from medstack.evaluation.score import Scored
from medstack.inference.bundle import Bundle

REPORT_KEY = "evaluate-report"
METRICS_KEY = "evaluate-metrics"


@task(name="read_labelled_data", cache_policy=NO_CACHE)
def read_labelled_data(bundle: Bundle, request: EvaluationRequest) -> LabelledData:
    """The data's labels and classes, matched to the bundle's by name before any image is decoded; the output
    folder checked, so a bad input fails before scoring."""
    from medstack.evaluation.labelled import read_labelled
    from medstack.outputs import check_output_dir

    data = read_labelled(request.data, bundle.classes, request.class_names)
    check_output_dir(request.output_dir)
    return data


@task(name="score_labelled", cache_policy=NO_CACHE)
def score_labelled(bundle: Bundle, data: LabelledData, request: EvaluationRequest) -> Scored:
    """Every model's probabilities on the data, through prediction's reader and scorer."""
    from medstack.evaluation.score import score_labelled as score

    return score(bundle, data, engine=request.engine, batch_size=request.batch_size,
                 on_bad_image=request.on_bad_image)


@task(name="judge_evaluation", cache_policy=NO_CACHE)
def judge_evaluation(bundle: Bundle, data: LabelledData, scored: Scored, request: EvaluationRequest) -> dict:
    """evaluation.json's content: the frozen decisions judged beside the run's test split (and the recalibration
    when the request asks for one)."""
    from medstack.evaluation.evaluate import evaluate_scored
    from medstack.evaluation.folder import new_evaluation_id
    from medstack.evaluation.measures import run_settings

    settings = run_settings(bundle.root, bundle.classes, request.bootstrap)
    model = bundle.model_for(request.use, request.engine)
    return evaluate_scored(bundle, data, scored, settings, model=model, evaluation_id=new_evaluation_id(data.source),
                           recalibrate=request.recalibrate, recalibrate_seed=request.seed)


@task(name="write_evaluation", cache_policy=NO_CACHE)
def write_evaluation(bundle: Bundle, evaluation: dict, scored: Scored, output_dir: str) -> str:
    """The evaluation folder, written atomically."""
    from medstack.evaluation.folder import save_evaluation
    from medstack.models.decision import apply_decision

    model = evaluation["model"]["chosen"]
    labels = apply_decision(scored.probas[model], bundle.decision(model))
    return str(save_evaluation(output_dir, evaluation, scored, labels, bundle.trust(model, scored.probas[model])))


@task(name="publish_evaluation", cache_policy=NO_CACHE)
def publish_evaluation(folder: str, evaluation: dict) -> None:
    """The report (plots inlined) as a markdown artifact, and every model's headline metrics as a table."""
    from medstack.evaluation.folder import REPORT_FILE
    from medstack.report import inline_images
    from medstack.run_folder import HEADLINE_METRICS

    text = inline_images((Path(folder) / REPORT_FILE).read_text(), Path(folder))
    create_markdown_artifact(text, key=REPORT_KEY,
                             description=f"external validation of run {evaluation['model']['run_id']} on "
                                         f"{evaluation['data']['source']}")
    rows: list[dict[str, Any]] = []
    for name, result in evaluation["models"].items():
        for split, part in (("this data", result["external"]), ("run's test split", result.get("run_test"))):
            if part:
                rows.append({"model": name, "images": split, **{k: part["metrics"].get(k) for k in HEADLINE_METRICS},
                             "ece": part["calibration"]["ece"]})
    create_table_artifact(rows, key=METRICS_KEY, description=f"{evaluation['data']['images']} labelled images; "
                                                             f"folder {folder}")
