"""The medstack-evaluate flow: load bundle -> read labelled data -> score -> judge -> write folder -> artifacts.

Deployments (``prefect.yaml``) name a registry alias such as ``pneumoniamnist@champion``, resolved when each run
starts, so a promotion changes which model the next external validation judges, with no redeploy::

    prefect deployment run 'medstack-evaluate/pneumoniamnist' --param data=/data/site-b.npz --watch
"""

# No `from __future__ import annotations`: Prefect builds the parameter schema from these annotations.
from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger

from medstack.evaluation.run import EvaluationRequest
from medstack.tasks.evaluate import (
    judge_evaluation, publish_evaluation, read_labelled_data, score_labelled, write_evaluation,
)
from medstack.tasks.predict import load_bundle

FLOW_NAME = "medstack-evaluate"


@flow(name=FLOW_NAME, log_prints=True)
def evaluate_flow(
    data: str,
    model: str = "pneumoniamnist@champion",
    output_dir: str = "evaluations",
    registry: Optional[str] = None,
    use: Optional[str] = None,
    class_names: Optional[list[str]] = None,
    recalibrate: Optional[float] = None,
    seed: Optional[int] = None,
    bootstrap: Optional[int] = None,
    on_bad_image: Literal["error", "skip"] = "error",
    batch_size: int = 256,
) -> str:
    """Judge ``model`` (``<name>@<alias>`` or a run folder) on labelled ``data`` (an npz with labels and
    ``class_names``, or a folder with one sub-folder per class); returns the evaluation folder.

    ``recalibrate`` (a fraction such as 0.5) refits temperature, decision and conformal quantiles on that stratified
    part of the data and judges before and after on the rest; unset, nothing is fitted on the data. ``registry``
    defaults to ``$MEDSTACK_REGISTRY``, else registry.json in medstack's user data folder.
    """
    logger = get_run_logger()
    request = EvaluationRequest(model=model, data=data, registry=registry, output_dir=output_dir, use=use,
                                class_names=class_names, batch_size=batch_size, on_bad_image=on_bad_image,
                                bootstrap=bootstrap, recalibrate=recalibrate, seed=seed)
    bundle = load_bundle(model, registry)
    labelled = read_labelled_data(bundle, request)
    scored = score_labelled(bundle, labelled, request)
    evaluation = judge_evaluation(bundle, labelled, scored, request)
    folder = write_evaluation(bundle, evaluation, scored, output_dir)
    publish_evaluation(folder, evaluation)
    logger.info("%s -> run %s judged on %d labelled image(s) of %s; wrote %s", model, bundle.run_id,
                evaluation["data"]["images"], data, folder)
    return str(Path(folder).resolve())
