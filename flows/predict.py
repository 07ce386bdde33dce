"""The medstack-predict flow: load bundle -> score batches -> write outputs -> artifacts.

Deployments (``prefect.yaml``) name a registry alias such as ``pneumoniamnist@champion``; the alias is resolved
when a run starts, so a promotion changes what the deployment serves without a redeploy::

    prefect deployment run 'medstack-predict/pneumoniamnist' --param input=/data/incoming --watch
"""

# No `from __future__ import annotations`: Prefect builds the parameter schema from these annotations.
import datetime as dt
from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger

from medstack.tasks.predict import load_bundle, publish_predictions, score_batches

FLOW_NAME = "medstack-predict"


@flow(name=FLOW_NAME, log_prints=True)
def predict_flow(
    input: str,
    model: str = "pneumoniamnist@champion",
    output: Optional[str] = None,
    registry: Optional[str] = None,
    use: Optional[str] = None,
    on_bad_image: Literal["error", "skip"] = "error",
    batch_size: int = 256,
    heatmaps: int = 4,
) -> str:
    """Score ``input`` (image, folder, npz or CSV of paths) with ``model`` (``<name>@<alias>`` or a run folder).

    ``output`` defaults to ``predictions/<run-id>-<UTC time>.csv`` under the working directory; ``registry``
    to ``$MEDSTACK_REGISTRY``, else registry.json in medstack's user data folder (~/.local/share/medstack on Linux;
    medstack.inference.registry.registry_path); ``use`` to the run's recommended model.
    """
    logger = get_run_logger()
    bundle = load_bundle(model, registry)
    if output is None:
        output = str(Path("predictions") / f"{bundle.run_id}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}.csv")
    heatmap_dir = str(Path(output).with_name(Path(output).stem + "-heatmaps"))
    summary = score_batches(bundle, input, output, use, batch_size, on_bad_image, heatmaps, heatmap_dir)
    publish_predictions(summary, bundle)
    logger.info("%s -> run %s: %d scored, %d skipped, %d with drift warnings; wrote %s", model, bundle.run_id,
                summary["scored"], len(summary["skipped"]), summary["warned_inputs"], output)
    return str(Path(output).resolve())
