"""Latency and throughput of `medstack serve-model` over loopback HTTP, with 1 and 8 concurrent clients.

Starts the server on a free 127.0.0.1 port (or uses --url), then sends a fixed number of requests built from the
PneumoniaMNIST test images encoded as PNG: single-image requests (latency p50/p95/p99 and images/s) and batch
requests of --batch images (images/s). Nothing leaves the machine. Afterwards, with the server stopped, it times the
fused model alone in this process (no HTTP, no decoding), which is the floor the service cannot go below, and counts
the CNN passes one image costs (members x folds x test-time views).

    python benchmarks/serve_latency.py --model runs/<run-id>
    python benchmarks/serve_latency.py --model pneumoniamnist@champion --requests 400 --batch 64
    python benchmarks/serve_latency.py --model runs/<run-id> --engine student   # the one-network model alone
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from medstack.console.quiet import ENVIRONMENT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]


def png_images(npz: Path, n: int) -> list[bytes]:
    with np.load(npz) as data:
        images = data["test_images"][:n]
    out = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def start_server(model: str, registry: str | None, max_batch: int, engine: str) -> tuple[subprocess.Popen, str]:
    command = [str(Path(sys.executable).with_name("medstack")), "serve-model", "--model", model, "--port", "0",
               "-q", "--max-batch", str(max_batch), "--engine", engine]
    if registry:
        command += ["--registry", registry]
    env = {**os.environ, **ENVIRONMENT_DEFAULTS}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("listening on "):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its output
            return process, line.split()[2]
    sys.exit("server did not start:\n" + "".join(lines))


def run_load(url: str, images: list[bytes], requests: int, clients: int, per_request: int) -> dict[str, float]:
    """``requests`` POSTs of ``per_request`` images each, spread over ``clients`` threads with keep-alive clients."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            for r in range(index, requests, clients):
                files = [("files", (f"{r}-{k}.png", images[(r * per_request + k) % len(images)], "image/png"))
                         for k in range(per_request)]
                started = time.perf_counter()
                response = client.post(f"{url}/predict", files=files)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "images_per_s": requests * per_request / wall, "requests": requests}


def model_floor(model: str, registry: str | None, batch: int, engine: str) -> dict[str, float]:
    """The engine's graph alone, in this process: ms for one image and images/s at ``batch``; CNN passes per
    image (fold models, or the student's one network, x test-time views)."""
    from medstack.inference.bundle import load_bundle
    from medstack.inference.fused import make_scorer
    from medstack.models.network import tta_view_count

    bundle = load_bundle(model, registry)
    scorer = make_scorer(bundle, engine)
    networks = [bundle.student_model()] if engine == "student" else (
        [m for ms in bundle.member_models().values() for m in ms] + ([bundle.student_model()] if bundle.has_student
                                                                     else []))  # the fused graph runs it too
    folds, one = len(networks), networks[0]
    views = tta_view_count(one)
    x1, xb = np.zeros((1, *bundle.input_shape), np.uint8), np.zeros((batch, *bundle.input_shape), np.uint8)
    scorer(x1), scorer(xb)
    singles = []
    for _ in range(50):
        started = time.perf_counter()
        scorer(x1)
        singles.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(5):
        scorer(xb)
    rate = 5 * batch / (time.perf_counter() - started)
    return {"single_ms": 1000 * float(np.median(singles)), "batch_images_per_s": rate, "folds": folds, "views": views}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or <name>@<alias>")
    parser.add_argument("--registry")
    parser.add_argument("--url", help="an already running server (default: start one on a free loopback port)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pneumoniamnist.npz"))
    parser.add_argument("--requests", type=int, default=200, help="single-image requests per client setting")
    parser.add_argument("--batch", type=int, default=64, help="images per batch request")
    parser.add_argument("--batch-requests", type=int, default=16, help="batch requests per client setting")
    parser.add_argument("--engine", choices=("fused", "student"), default="fused",
                        help="serve the whole run (fused) or its one-network student")
    args = parser.parse_args()
    for key, value in ENVIRONMENT_DEFAULTS.items():  # this process imports TensorFlow too (the graph alone)
        os.environ.setdefault(key, value)
    images = png_images(Path(args.data), 256)
    process, url = (None, args.url) if args.url else start_server(args.model, args.registry, max(256, args.batch),
                                                                        args.engine)
    rows = []
    try:
        run_load(url, images, 10, 1, 1)  # warm-up: connections, first requests
        for clients in (1, 8):
            rows.append(("1 image", clients, run_load(url, images, args.requests, clients, 1)))
        for clients in (1, 8):
            rows.append((f"{args.batch} images", clients, run_load(url, images, args.batch_requests, clients, args.batch)))
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    print(f"server: {url}  model: {args.model}  engine: {args.engine}  cores: {os.cpu_count()}")
    print("| request | clients | requests | latency p50 | p95 | p99 | images/s |")
    print("|---|---|---|---|---|---|---|")
    for kind, clients, r in rows:
        print(f"| {kind} | {clients} | {r['requests']} | {r['p50']:.1f} ms | {r['p95']:.1f} ms | {r['p99']:.1f} ms "
              f"| {r['images_per_s']:,.0f} |")
    floor = model_floor(args.model, args.registry, 256, args.engine)
    print(f"{args.engine} graph alone (this process, no HTTP): {floor['single_ms']:.1f} ms for one image, "
          f"{floor['batch_images_per_s']:,.0f} images/s in batches of 256; one image = {floor['folds']} network(s) "
          f"x {floor['views']} test-time views = {floor['folds'] * floor['views']} CNN passes")


if __name__ == "__main__":
    main()
