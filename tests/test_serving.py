"""`medstack serve-model` over real HTTP: uvicorn started through the console script on a free loopback port.

One server per module serves ``<name>@champion`` of a registry holding two copies of the session's smoke run, with
small limits so that every 4xx row is cheap to reach. Answers are compared with `medstack predict` on the same
files."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medstack.cli import main
from medstack.inference.registry import promote
from serving_helpers import MEDSTACK, Server
from test_bad_inputs import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MAX_FILES = 4
MAX_UPLOAD_MB = 0.25
MAX_PIXELS = 1_000_000


def _copy(smoke_bundle: Path, runs: Path, run_id: str) -> Path:
    run = runs / run_id
    shutil.copytree(smoke_bundle, run)
    meta = json.loads((run / "model.json").read_text())
    meta["run_id"] = run_id
    (run / "model.json").write_text(json.dumps(meta))
    return run


@pytest.fixture(scope="module")
def served(smoke_bundle, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    runs = base / "runs"
    first, second = _copy(smoke_bundle, runs, "run-a"), _copy(smoke_bundle, runs, "run-b")
    registry = runs / "registry.json"
    promote(first, "champion", registry=registry)
    server = Server(["--model", "pneumoniamnist-smoke@champion", "--registry", str(registry), "--port", "0",
                     "--max-files", str(MAX_FILES), "--max-upload-mb", str(MAX_UPLOAD_MB),
                     "--max-pixels", str(MAX_PIXELS)], cwd=base)
    yield {"server": server, "url": server.url, "registry": registry, "first": first, "second": second,
           "base": base}
    assert server.stop() == 0, "\n".join(server.lines)
    assert any(line.startswith("stopped serving run ") for line in server.lines), "\n".join(server.lines)


@pytest.fixture(scope="module")
def pngs(served, pneumonia_npz) -> list[Path]:
    """Six of the official test images as PNG files."""
    folder = served["base"] / "pngs"
    folder.mkdir()
    with np.load(pneumonia_npz) as data:
        images = data["test_images"][:6]
    paths = []
    for row, pixels in enumerate(images):
        path = folder / f"test{row:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _post(url: str, files: list[tuple[str, bytes, str]], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", f) for f in files], timeout=timeout)


def _png(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/png")


def test_health_and_model_say_what_is_served(served):
    health = httpx.get(f"{served['url']}/health", timeout=10).json()
    assert health["status"] == "ok" and health["run_id"] == "run-a"
    model = httpx.get(f"{served['url']}/model", timeout=10).json()
    bundle = json.loads((served["first"] / "model.json").read_text())
    assert model["run_id"] == "run-a" and model["classes"] == bundle["classes"]
    assert model["served"]["reference"] == "pneumoniamnist-smoke@champion"
    assert model["served"]["model"] == bundle["recommended"]["model"]
    assert model["served"]["decision"]["threshold"] == bundle["decisions"][bundle["recommended"]["model"]]["threshold"]
    assert model["served"]["limits"]["max_files"] == MAX_FILES
    # bound to loopback by default
    assert served["url"].startswith("http://127.0.0.1:")


def test_one_image_equals_medstack_predict(served, pngs, tmp_path, capsys):
    response = _post(served["url"], [_png(pngs[0])])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["run_id"] == "run-a" and body["classes"] == ["normal", "pneumonia"]
    [answer] = body["predictions"]
    assert answer["file"] == pngs[0].name
    out = tmp_path / "predicted.csv"
    assert main(["predict", "--model", str(served["first"]), "--input", str(pngs[0]), "--output", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert answer["predicted"] == row["predicted"] and body["model"] == row["model"]
    for model, probabilities in answer["models"].items():
        for name, p in probabilities.items():
            assert p == pytest.approx(row[f"{model}:p({name})"], abs=1e-5), (model, name)
    assert answer["probabilities"] == answer["models"][body["model"]]
    threshold = body["decision"]["threshold"]
    assert answer["confidence"] == pytest.approx(abs(answer["probabilities"]["pneumonia"] - threshold), abs=1e-6)
    assert body["decision"]["text"].startswith("pneumonia if P >= ")
    # The same set, p-values and referral as medstack predict's columns (one implementation: inference.trust).
    assert set(answer["sets"]) == {"set_90", "set_95"} and body["note"] is None
    for column, members in answer["sets"].items():
        assert row[column] == "{" + ", ".join(members) + "}"
    for name, p in answer["p_values"].items():
        assert p == pytest.approx(row[f"p_value:{name}"], rel=1e-8)  # the CSV keeps 9 significant digits
    assert answer["refer"] == bool(row["refer"]) and answer["refer_reason"] == ("" if pd.isna(row["refer_reason"])
                                                                                else row["refer_reason"])


def test_several_images_in_one_request_are_one_batch(served, pngs):
    before = httpx.get(f"{served['url']}/model", timeout=10).json()["served"]["scoring"]
    response = _post(served["url"], [_png(p) for p in pngs[:MAX_FILES]])
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["file"] for a in answers] == [p.name for p in pngs[:MAX_FILES]]
    after = httpx.get(f"{served['url']}/model", timeout=10).json()["served"]["scoring"]
    assert after["images"] - before["images"] == MAX_FILES
    assert after["calls"] - before["calls"] == 1  # one call of the fused model for the whole request
    singles = [_post(served["url"], [_png(p)]).json()["predictions"][0] for p in pngs[:2]]
    from medstack.inference.bundle import load_bundle

    bundle = load_bundle(served["first"])
    model = response.json()["model"]
    proba = np.array([[a["probabilities"][c] for c in bundle.classes] for a in answers])
    trust = bundle.trust(model, proba)  # what model.json's calibration gives for the served probabilities
    for i, answer in enumerate(answers):
        assert {k: answer[k] for k in ("sets", "p_values", "refer", "refer_reason")} == trust.row(i)
    for single, batched in zip(singles, answers):
        assert single["predicted"] == batched["predicted"]
        assert single["probabilities"]["pneumonia"] == pytest.approx(batched["probabilities"]["pneumonia"], abs=1e-5)


def _tiff_float() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((28, 28), dtype=np.float32), mode="F").save(buffer, "TIFF")
    return buffer.getvalue()


def _tiff_unknown_compression() -> bytes:
    """A TIFF whose Compression tag names no known scheme."""
    import struct

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    (ifd,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 259:
            data[entry + 8 : entry + 10] = struct.pack("<H", 9999)
    return bytes(data)


def _big_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")  # compresses to a few kB
    return buffer.getvalue()


@pytest.mark.parametrize("files, status, words", [
    ([("notes.txt", b"not an image", "text/plain")], 415, "not an image type"),
    ([("report.pdf", b"%PDF-1.4 ...", "application/octet-stream")], 415, "'.pdf' is not an image type"),
    ([("scan.png", b"\x89PNG\r\n\x1a\n broken", "image/png")], 422, "cannot decode"),
    ([("scan.png", b"", "image/png")], 422, "empty file"),
    ([("float.tiff", _tiff_float(), "image/tiff")], 422, "floating-point images"),
    ([("odd.tiff", _tiff_unknown_compression(), "image/tiff")], 422, "cannot decode"),
    ([("scan.jpg", b"\xff\xd8\xff\xe0" + bytes(100), "image/jpeg")], 422, "cannot decode"),
    ([("huge.png", _big_png(2000, 1000), "image/png")], 413, "more than this server's limit"),
    ([("big.bin", bytes(int(MAX_UPLOAD_MB * 1024 * 1024) + 10), "image/png")], 413, "limit of"),
])
def test_bad_files_get_a_4xx_with_a_message(served, files, status, words):
    response = _post(served["url"], files)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert files[0][0] in response.json()["detail"] or status == 413


def test_bad_requests_get_a_4xx_with_a_message(served, pngs):
    url = served["url"]
    too_many = _post(url, [_png(pngs[0])] * (MAX_FILES + 1))
    assert too_many.status_code == 413 and f"at most {MAX_FILES}" in too_many.json()["detail"]
    nothing = httpx.post(f"{url}/predict", files=[("other", _png(pngs[0]))], timeout=30)
    assert nothing.status_code == 422 and "field 'files'" in nothing.json()["detail"]
    text_field = httpx.post(f"{url}/predict", data={"files": "row1.png"}, files=[("files", _png(pngs[0]))], timeout=30)
    assert text_field.status_code == 422 and "not text" in text_field.json()["detail"]
    as_json = httpx.post(f"{url}/predict", json={"files": ["scan.png"]}, timeout=30)
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    # A body without Content-Length (chunked) is counted as it arrives.
    boundary = "medstack-test-boundary"

    def chunked():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(30):
            yield bytes(10_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    streamed = httpx.post(f"{url}/predict", content=chunked(), timeout=30,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert streamed.status_code == 413 and "limit of" in streamed.json()["detail"]
    # One bad file among good ones: the whole request is refused, naming the file.
    mixed = _post(url, [_png(pngs[0]), ("second.png", b"garbage", "image/png")])
    assert mixed.status_code == 422 and "second.png" in mixed.json()["detail"]
    # The server is still healthy and counted the refusals.
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["rejected"] >= 5


def test_eight_concurrent_clients_get_their_own_answers(served, pngs):
    url = served["url"]
    expected = {p.name: _post(url, [_png(p)]).json()["predictions"][0] for p in pngs}

    def ask(i: int) -> tuple[str, dict]:
        path = pngs[i % len(pngs)]
        response = _post(url, [_png(path)], timeout=120)
        assert response.status_code == 200, response.text
        return path.name, response.json()["predictions"][0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    for name, answer in answers:
        assert answer["file"] == name and answer["predicted"] == expected[name]["predicted"]
        assert answer["probabilities"]["pneumonia"] == pytest.approx(expected[name]["probabilities"]["pneumonia"],
                                                                     abs=1e-5)


def test_reload_picks_up_a_promotion_without_a_restart(served, pngs):
    url = served["url"]
    unchanged = httpx.post(f"{url}/reload", timeout=120).json()
    assert unchanged["changed"] is False and unchanged["run_id"] == "run-a"
    promote(served["second"], "champion", registry=served["registry"], reason="serving test")
    event = httpx.post(f"{url}/reload", timeout=240).json()
    assert event["changed"] is True and (event["previous_run_id"], event["run_id"]) == ("run-a", "run-b")
    assert httpx.get(f"{url}/model", timeout=10).json()["run_id"] == "run-b"
    assert _post(url, [_png(pngs[0])]).json()["run_id"] == "run-b"
    # SIGHUP does the same: promote run-a back and signal the process.
    promote(served["first"], "champion", registry=served["registry"], reason="serving test, back")
    served["server"].process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 240
    while httpx.get(f"{url}/model", timeout=10).json()["run_id"] != "run-a":
        assert time.monotonic() < deadline, "\n".join(served["server"].lines)
        time.sleep(0.5)
    assert [r["run_id"] for r in httpx.get(f"{url}/model", timeout=10).json()["served"]["reloads"]] == ["run-b", "run-a"]


def test_a_broken_registry_keeps_the_old_model(served, pngs):
    registry = served["registry"]
    saved = registry.read_text()
    registry.write_text("{not json")
    try:
        response = httpx.post(f"{served['url']}/reload", timeout=60)
    finally:
        registry.write_text(saved)
    assert response.status_code == 409 and "still serving run" in response.json()["detail"]
    assert _post(served["url"], [_png(pngs[0])]).status_code == 200


def test_start_up_errors_are_one_line(served, tmp_path, capsys, monkeypatch):
    code, _, err, _ = run_cli(["serve-model", "--model", str(tmp_path / "nowhere"), "--port", "0"], capsys,
                              monkeypatch)  # in this process: it stops before anything is bound
    assert code == 2 and "no such run folder" in err
    port = served["url"].rsplit(":", 1)[1]
    taken = subprocess.run([MEDSTACK, "serve-model", "--model", str(served["first"]), "--port", port],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
