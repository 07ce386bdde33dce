"""Prediction nodes: load the bundle, score the inputs, publish what was predicted as artifacts."""

from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from medstack.inference.bundle import Bundle

COUNTS_KEY = "predict-class-counts"
UNSURE_KEY = "predict-least-confident"
HEATMAPS_KEY = "predict-heatmaps"
REFERRALS_KEY = "predict-referrals"


@task(name="load_bundle", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def load_bundle(model: str, registry: str | None) -> Bundle:
    """Resolve ``<name>@<alias>`` (or a run folder) now, so a promotion changes what the next run uses."""
    from medstack.inference.bundle import load_bundle as _load

    bundle = _load(model, registry)
    bundle.member_models()  # fail here, naming the file, rather than halfway through scoring
    return bundle


@task(name="score_batches", cache_policy=NO_CACHE)
def score_batches(bundle: Bundle, input: str, output: str, use: str | None, batch_size: int, on_bad_image: str,
                  heatmaps: int, heatmap_dir: str) -> dict:
    """Stream the inputs through the fused ensemble and write ``output`` atomically; Grad-CAM of the first few."""
    from medstack.inference.explain import OverlayWriter
    from medstack.inference.predict import predict

    model = bundle.check_model_name(use or bundle.recommended)
    overlays = OverlayWriter(bundle, model, heatmap_dir, limit=heatmaps) if heatmaps else None
    summary = predict(bundle, input, output, use=use, batch_size=batch_size, on_bad_image=on_bad_image,
                      on_batch=overlays)
    return {**asdict(summary), "heatmaps": [str(p) for p in (overlays.files if overlays else [])]}


@task(name="publish_predictions", cache_policy=NO_CACHE)
def publish_predictions(summary: dict, bundle: Bundle) -> None:
    """A table of class counts, a table of the least confident cases, a table of referred cases by reason, a
    markdown artifact with the referral count and heatmaps."""
    create_table_artifact(
        [{"class": name, "images": n} for name, n in summary["class_counts"].items()],
        key=COUNTS_KEY, description=f"{summary['scored']} images scored by {summary['model']} of run {summary['run_id']}",
    )
    create_table_artifact(
        [{"input": row["input"], "predicted": row["predicted"], "confidence": row["confidence"],
          **{f"p({c})": p for c, p in zip(bundle.classes, row["probabilities"])}} for row in summary["least_confident"]],
        key=UNSURE_KEY, description="the cases closest to their decision boundary: look at these first",
    )
    lines = [f"# Predictions of run {summary['run_id']} ({bundle.source})", "",
             f"{summary['scored']} images, labels from **{summary['model']}**, written to `{summary['output']}`.",
             f"Skipped: {len(summary['skipped'])}. Inputs with drift warnings: {summary['warned_inputs']} "
             f"{summary['warnings'] or ''}.", ""]
    if summary["referred"] is not None:
        lines += [f"Referred to a person: **{summary['referred']}** of {summary['scored']} "
                  f"({summary['referral_rule']}); the output's `refer` and `refer_reason` columns say which.", ""]
        create_table_artifact(
            [{"reason": reason, "images": n} for reason, n in summary["referral_reasons"].items()]
            or [{"reason": "none referred", "images": 0}],
            key=REFERRALS_KEY, description=f"{summary['referred']} of {summary['scored']} images referred",
        )
    lines += [f"Note: {note}." for note in summary["notes"]] + ([""] if summary["notes"] else [])
    for path in summary["heatmaps"]:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        lines += [f"**{Path(path).name}**", "", f"![Grad-CAM](data:image/png;base64,{data})", ""]
    create_markdown_artifact("\n".join(lines), key=HEATMAPS_KEY, description="prediction summary with Grad-CAM")
