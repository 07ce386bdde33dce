"""The medstack-predict flow on a Prefect test server: alias resolved per run, outputs and artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medstack.inference.registry import promote

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_predict_flow_follows_the_alias_and_publishes_artifacts(prefect_harness, smoke_bundle, tmp_path):
    from medstack.flows.predict import predict_flow

    rng = np.random.default_rng(3)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(60, 200, (28, 28), dtype=np.uint8)).save(incoming / f"scan_{i:02d}.png")
    registry = tmp_path / "runs" / "registry.json"
    promote(smoke_bundle, "champion", registry=registry)
    out = tmp_path / "first.csv"
    written = predict_flow(input=str(incoming), model="pneumoniamnist-smoke@champion", output=str(out),
                           registry=str(registry), heatmaps=2)
    first = pd.read_csv(written)
    assert len(first) == 12 and set(first["run_id"]) == {smoke_bundle.name}
    assert len(list((tmp_path / "first-heatmaps").glob("*.png"))) == 2

    counts = _artifact("predict-class-counts")[-1]
    table = json.loads(counts.data) if isinstance(counts.data, str) else counts.data
    assert {row["class"]: row["images"] for row in table} == first["predicted"].value_counts().reindex(
        ["normal", "pneumonia"], fill_value=0).to_dict()
    unsure = _artifact("predict-least-confident")[-1]
    assert len(json.loads(unsure.data) if isinstance(unsure.data, str) else unsure.data) == 10
    summary = _artifact("predict-heatmaps")[-1].data
    assert "data:image/png;base64," in summary
    # Referred cases are counted, in words and by reason, from the same refer column the output file holds.
    referred = int(first["refer"].sum())
    assert f"Referred to a person: **{referred}** of 12" in summary
    reasons = _artifact("predict-referrals")[-1]
    rows = json.loads(reasons.data) if isinstance(reasons.data, str) else reasons.data
    assert sum(row["images"] for row in rows) == referred
    assert {row["reason"] for row in rows if row["images"]} == set(first["refer_reason"].dropna())

    # A promotion changes what the next run uses, with no redeploy: the alias is resolved when a run starts.
    successor = tmp_path / "runs" / "successor"
    shutil.copytree(smoke_bundle, successor)
    meta = json.loads((successor / "model.json").read_text())
    meta["run_id"] = "successor"
    (successor / "model.json").write_text(json.dumps(meta))
    promote(successor, "champion", registry=registry)
    second = pd.read_csv(predict_flow(input=str(incoming), model="pneumoniamnist-smoke@champion",
                                      output=str(tmp_path / "second.csv"), registry=str(registry), heatmaps=0))
    assert set(second["run_id"]) == {"successor"}
    probability = [c for c in first.columns if ":p(" in c]
    np.testing.assert_allclose(second[probability], first[probability], atol=1e-6)
