"""API keys of `medstack serve-model` over real HTTP.

One server for the module: the session's smoke run on 127.0.0.1 started with ``--api-key-file``, as if it were
exposed (given keys, loopback needs them too). The refusal to start and the ``--insecure`` warning go through the
console script with a model path that does not exist, so that a server loading the model before deciding would fail
these tests with another message; neither binds anything but loopback. No request goes anywhere but 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from PIL import Image

from medstack.data.npz import load_npz
from medstack.inference.bundle import load_bundle
from medstack.serving.app import UNAUTHORIZED, create_app
from medstack.serving.model import BatchScorer, ModelHolder, ServedModel
from serving_helpers import MEDSTACK, Server, server_env
from test_bad_inputs import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

KEY = "ward3-viewer-0123456789abcdef"
OTHER = "pacs-gateway-fedcba9876543210"
WRONG = "not-a-key-of-this-server-42"


@pytest.fixture(scope="module")
def guarded(smoke_bundle, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving-auth")
    keys = base / "keys.txt"
    keys.write_text(f"# clients of ward 3\n{KEY}\n")
    server = Server(["--model", str(smoke_bundle), "--host", "127.0.0.1", "--port", "0", "--api-key-file",
                     str(keys)], cwd=base)
    yield {"server": server, "url": server.url, "keys": keys, "base": base}
    assert server.stop() == 0, "\n".join(server.lines)


@pytest.fixture(scope="module")
def scans(guarded, smoke_bundle, pneumonia_npz) -> list[tuple[Path, pd.Series]]:
    """Three of the run's test images as PNG files, each with its row of the run's test_predictions.csv."""
    expected = pd.read_csv(smoke_bundle / "test_predictions.csv").head(3)
    images = load_npz(pneumonia_npz, "pneumoniamnist").images[expected["row"].to_numpy()]
    folder = guarded["base"] / "scans"
    folder.mkdir()
    out = []
    for (_, row), pixels in zip(expected.iterrows(), images):
        path = folder / f"row{int(row['row']):05d}.png"
        Image.fromarray(pixels[..., 0]).save(path)
        out.append((path, row))
    return out


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_every_route_but_health_refuses_a_missing_or_wrong_key_alike(guarded, scans):
    url = guarded["url"]
    before = httpx.get(f"{url}/health", timeout=10).json()
    routes = [("GET", "/model", {}), ("POST", "/reload", {}), ("POST", "/predict", {"files": _files([scans[0][0]])})]
    tries = [{}, _bearer(WRONG), _bearer(KEY[:-1]), _bearer(KEY + "x"), {"Authorization": f"Basic {KEY}"},
             {"Authorization": KEY}]
    bodies = set()
    for method, path, extra in routes:
        for headers in tries:
            response = httpx.request(method, f"{url}{path}", headers=headers, timeout=30, **extra)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            bodies.add(response.text)
    assert len(bodies) == 1 and UNAUTHORIZED in bodies.pop()  # the same answer, whatever was wrong
    after = httpx.get(f"{url}/health", timeout=10).json()
    assert after["requests"] == before["requests"]  # refused before the upload was read


def test_health_is_open_and_carries_no_warning(guarded, smoke_bundle):
    health = httpx.get(f"{guarded['url']}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["run_id"] == smoke_bundle.name
    assert "warning" not in health.json()


def test_the_right_key_scores_as_the_run_did(guarded, scans, smoke_bundle):
    url = guarded["url"]
    response = httpx.post(f"{url}/predict", files=_files([p for p, _ in scans]), headers=_bearer(KEY), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["run_id"] == smoke_bundle.name and len(body["predictions"]) == len(scans)
    for answer, (path, row) in zip(body["predictions"], scans):
        assert answer["file"] == path.name
        for model, probabilities in answer["models"].items():
            for name, p in probabilities.items():
                assert p == pytest.approx(row[f"{model}:p({name})"], abs=1e-4), (path.name, model, name)
    model = httpx.get(f"{url}/model", headers=_bearer(KEY), timeout=10)
    assert model.status_code == 200 and model.json()["run_id"] == smoke_bundle.name


def test_the_docs_show_the_bearer_scheme_on_every_route_but_health(guarded):
    url = guarded["url"]
    assert httpx.get(f"{url}/docs", timeout=10).status_code == 200  # open: the page where the key is entered
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer"
    operations = {(method, path): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert set(operations) == {("get", "/health"), ("get", "/model"), ("post", "/reload"), ("post", "/predict")}
    for (method, path), operation in operations.items():
        expected = None if path == "/health" else [{"api_key": []}]
        assert operation.get("security") == expected, (method, path)


def _wait_for_line(server: Server, wanted) -> None:
    """Until the server has printed a line ``wanted`` accepts: its log reaches the test through two threads, so
    it may arrive after the HTTP answer that caused it."""
    deadline = time.monotonic() + 30
    while not any(wanted(line) for line in server.lines):
        assert time.monotonic() < deadline, "\n".join(server.lines)
        time.sleep(0.2)


def test_a_failed_attempt_is_logged_with_the_client_and_path_not_the_key(guarded):
    server = guarded["server"]
    assert httpx.get(f"{guarded['url']}/model", headers=_bearer(WRONG), timeout=10).status_code == 401
    _wait_for_line(server, lambda line: "refused GET '/model' from 127.0.0.1:" in line and "not valid" in line)
    for secret in (WRONG, KEY[:-1], OTHER):  # KEY[:-1] also finds KEY and KEY + "x"
        assert not [line for line in server.lines if secret in line], secret


def _wait_until_accepted(url: str, key: str, server: Server) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/model", headers=_bearer(key), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "\n".join(server.lines)
        time.sleep(0.3)


def test_keys_rotate_on_sighup_and_reload_and_a_reload_never_leaves_none(guarded):
    url, keys, server = guarded["url"], guarded["keys"], guarded["server"]
    saved = keys.read_text()
    try:
        keys.write_text(f"{OTHER}\n")  # KEY rotated out, OTHER in
        server.process.send_signal(signal.SIGHUP)
        _wait_until_accepted(url, OTHER, server)
        assert httpx.get(f"{url}/model", headers=_bearer(KEY), timeout=10).status_code == 401
        keys.write_text("# every key revoked by mistake\n")
        kept = httpx.post(f"{url}/reload", headers=_bearer(OTHER), timeout=120)
        assert kept.status_code == 200, kept.text
        assert kept.json()["api_keys"]["kept"].startswith("kept the 1 key(s) in use: ")
        assert kept.json()["changed"] is False  # the model was not swapped either
        assert httpx.get(f"{url}/model", headers=_bearer(OTHER), timeout=10).status_code == 200
        _wait_for_line(server, lambda line: line.startswith("api keys: kept the 1 key(s) in use"))
        keys.write_text(f"{KEY}\n")
        rotated = httpx.post(f"{url}/reload", headers=_bearer(OTHER), timeout=120)
        assert rotated.json()["api_keys"] == {"keys": 1, "changed": True, "kept": None}
        assert httpx.get(f"{url}/model", headers=_bearer(KEY), timeout=10).status_code == 200
        assert httpx.get(f"{url}/model", headers=_bearer(OTHER), timeout=10).status_code == 401
    finally:
        keys.write_text(saved)


def _serve_model(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MEDSTACK, "serve-model", *args], capture_output=True, text=True, timeout=120,
                          env=server_env())


def test_a_non_loopback_host_without_a_key_is_refused_before_the_load(tmp_path):
    done = _serve_model("--model", str(tmp_path / "nowhere"), "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()  # one line, and not the missing model's: nothing was loaded
    assert line.startswith("medstack: --host 0.0.0.0 is not loopback") and "--api-key-file" in line
    assert "--insecure" in line


@pytest.mark.parametrize("text, words", [
    ("short-key\n", "line 1: a key of 9 characters is too short"),
    ("# no key yet\n\n", "holds no key"),
])
def test_an_unusable_key_file_stops_the_start(tmp_path, capsys, monkeypatch, text, words):
    """In this process (the console script's way of refusing a start is proven by the tests around this one)."""
    path = tmp_path / "keys.txt"
    path.write_text(text)
    monkeypatch.delenv("MEDSTACK_API_KEYS", raising=False)
    code, _, err, _ = run_cli(["serve-model", "--model", str(tmp_path / "nowhere"), "--port", "0", "--api-key-file",
                               str(path)], capsys, monkeypatch)
    assert code == 2
    [line] = err.strip().splitlines()
    assert words in line and "short-key" not in line


def test_insecure_warns_at_start(guarded, tmp_path):
    """Asks for 0.0.0.0 on the port the module's server holds on 127.0.0.1: the warning comes first, then the bind
    fails (Linux refuses a wildcard bind beside a listening socket), so nothing is ever bound beyond loopback."""
    port = guarded["url"].rsplit(":", 1)[1]
    done = _serve_model("--model", str(tmp_path / "nowhere"), "--host", "0.0.0.0", "--port", port, "--insecure")
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("medstack: warning: no API key on 0.0.0.0 (--insecure)"), done.stderr
    assert done.returncode == 2 and f"cannot listen on 0.0.0.0:{port}" in lines[-1]


def test_health_carries_the_warning_of_a_server_without_keys(smoke_bundle):
    """The app in process, without keys: /health carries the warning, no route asks for a key and the OpenAPI
    schema names no scheme. The scorer is never called, so it is a stand-in that returns nothing."""

    def unscored(ref, registry, use, max_batch) -> ServedModel:
        bundle = load_bundle(ref, registry)
        return ServedModel(bundle=bundle, model=bundle.recommended, batcher=BatchScorer(lambda x: {}, max_batch),
                           loaded_at="now", load_seconds=0.0)

    holder = ModelHolder(smoke_bundle, loader=unscored)
    app = create_app(holder, warning="no API key on 0.0.0.0 (--insecure)")

    async def ask() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.get(path) for path in ("/health", "/model", "/openapi.json")]

    try:
        health, model, schema = asyncio.run(ask())
    finally:
        holder.close()
    assert health.json()["warning"] == "no API key on 0.0.0.0 (--insecure)"
    assert model.status_code == 200 and model.json()["run_id"] == smoke_bundle.name
    assert "securitySchemes" not in schema.json().get("components", {})
