"""medstack as a Prefect project, against a real Prefect server: prefect.yaml, a process worker, the UI.

One module-scoped stack: ``prefect server start`` on a free loopback port with a throwaway PREFECT_HOME (its database
already migrated: conftest's ``prefect_home_with_database``), the work pool and a ``gpu`` tag concurrency limit,
``prefect deploy --all`` from prefect.yaml, and a process worker. The smoke deployment is then run cold with
``prefect deployment run ... --watch`` through the worker, and again, cached, through the deployment ``medstack
serve`` registers; everything is checked through the Prefect client. The browser test opens the real UI in Debian's
Chromium (headless) and skips, saying why, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from medstack.console.quiet import ENVIRONMENT_DEFAULTS
from medstack.deploy import config_parameters
from server_helpers import chromium, free_port, stop_group, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
MEDSTACK = str(Path(sys.executable).with_name("medstack"))
FLOW = "medstack-ensemble"
POOL = yaml.safe_load((REPO / "prefect.yaml").read_text())["definitions"]["work_pool"]["name"]
# The deployment runs: the smoke deployment on a smaller stratified subset of PneumoniaMNIST with one of its
# strategies (2 fold trainings a cold run), so that a cold run through the worker stays cheap.
SUBSET = {"train": 120, "val": 40, "test": 40}
STRATEGIES = {"class_weight": {}}
SMOKE_FOLD_TASKS = {f"train[{s}|fold-{k}]" for s in STRATEGIES for k in (1, 2)}


@dataclass
class PrefectStack:
    """A live Prefect server (and later a worker) with the environment every CLI call must share."""

    env: dict[str, str]
    url: str
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        print(f"$ prefect {' '.join(args)}  (exit {done.returncode})\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def start(self, name: str, *args: str, program: str = PREFECT) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(
            [program, *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(proc)
        return proc

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api)

    def stop(self) -> None:
        for proc in reversed(self.processes):  # worker (and its flow-run processes) first, then the server
            stop_group(proc, grace=8)  # one of them sat out 30 s of the suite here before the SIGKILL


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_home_with_database):
    base = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home_with_database(base / "home")),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        **ENVIRONMENT_DEFAULTS,  # no telemetry (this machine has no outbound network), quiet TensorFlow
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick up runs quickly (default 10 s)
        # The weekly deployment's schedule stays active, but no run of it is created: a suite running across
        # Monday 03:00 Berlin time would otherwise start a full training on this worker.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    stack = PrefectStack(env=env, url=url, logs=base)
    server = stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
    try:
        wait_healthy(f"{stack.api}/health", server, base / "server.log", timeout=180, what="prefect server")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def deployed(stack):
    """The steps of docs/prefect.md: work pool, GPU tag limit, `prefect deploy --all`, a worker on the pool."""
    assert stack.cli("work-pool", "create", POOL, "--type", "process").returncode == 0
    # One training at a time through the `gpu` tag: the same command caps trainings per GPU on a GPU machine.
    assert stack.cli("concurrency-limit", "create", "gpu", "1").returncode == 0
    deploy = stack.cli("deploy", "--all")
    assert deploy.returncode == 0, deploy.stderr
    stack.start("worker", "worker", "start", "--pool", POOL)
    return stack


@dataclass
class DeploymentRun:
    flow_run_id: str
    wall_seconds: float
    run_dir: Path


@pytest.fixture(scope="module")
def smoke_runs(deployed, pneumonia_npz, tmp_path_factory) -> list[DeploymentRun]:
    """Two runs of the smoke config on one cache, each through `prefect deployment run ... --watch`: a cold one of
    'medstack-ensemble/smoke' (`prefect deploy`, run by the process worker), then a cached one of the deployment
    `medstack serve` registers and runs from its own process (no worker). Both take SUBSET and STRATEGIES (the cold
    run trains its own 2 folds, so they are kept small; the smoke config itself is trained once per session by
    conftest's smoke_bundle)."""
    out = tmp_path_factory.mktemp("deployment-outputs")
    overrides = {
        "data.path": str(pneumonia_npz),
        "data.subset": SUBSET,
        "strategies": STRATEGIES,
        "distill.enabled": False,  # the folds only: the student is the smoke bundle's (tests/test_student.py)
        "runtime.output_dir": str(out / "runs"),
        "runtime.cache_dir": str(out / "cache"),
    }
    runs = [_deployment_run(deployed, f"{FLOW}/smoke", overrides, log="worker")]
    serve = deployed.start("serve", "serve", "--config", "configs/smoke.yaml", "--name", "smoke-served",
                           program=MEDSTACK)
    deadline = time.monotonic() + 120
    while True:
        assert serve.poll() is None, _tail(deployed, "serve")
        try:
            _deployment(deployed, "smoke-served")
            break
        except Exception:
            assert time.monotonic() < deadline, f"no deployment from medstack serve:\n{_tail(deployed, 'serve')}"
            time.sleep(2)
    runs.append(_deployment_run(deployed, f"{FLOW}/smoke-served", overrides, log="serve"))
    return runs


def _deployment_run(stack: PrefectStack, deployment: str, overrides: dict, log: str) -> DeploymentRun:
    started = time.perf_counter()
    done = stack.cli("deployment", "run", deployment, "--param", f"overrides={json.dumps(overrides)}",
                     "--watch", "--watch-timeout", "900", timeout=960)
    wall = time.perf_counter() - started
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log} log:\n{_tail(stack, log)}"
    flow_run_id = _flow_run_id(done.stdout)
    run = DeploymentRun(flow_run_id, wall, _run_folder(stack, flow_run_id))
    print(f"{deployment}: {wall:.1f} s wall (prefect deployment run --watch), run folder {run.run_dir}")
    return run


def _tail(stack: PrefectStack, name: str) -> str:
    return (stack.logs / f"{name}.log").read_text()[-4000:]


def _flow_run_id(stdout: str) -> str:
    for line in stdout.splitlines():
        if "UUID:" in line:
            return line.split("UUID:")[1].strip()
    raise AssertionError(f"no flow run UUID in:\n{stdout[-2000:]}")


def _run_folder(stack: PrefectStack, flow_run_id: str) -> Path:
    """The run folder, read back from the run's link artifact (what a UI user clicks): ``[text](file://...)``."""
    from urllib.parse import unquote, urlparse

    link = next(a for a in _artifacts(stack, flow_run_id) if a.key == "ensemble-run-folder")
    assert "](file://" in link.data, link.data
    return Path(unquote(urlparse(link.data.split("](", 1)[1].rstrip(")")).path))


def _artifacts(stack: PrefectStack, flow_run_id: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with stack.client() as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _task_runs(stack: PrefectStack, flow_run_id: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _flow_run(stack: PrefectStack, flow_run_id: str):
    with stack.client() as client:
        return client.read_flow_run(flow_run_id)


def _deployment(stack: PrefectStack, name: str):
    with stack.client() as client:
        return client.read_deployment_by_name(f"{FLOW}/{name}")


# --------------------------------------------------------------------------------------------- deployments


@pytest.mark.parametrize("name, config", [
    ("smoke", "configs/smoke.yaml"),
    ("pneumoniamnist", "configs/pneumoniamnist.yaml"),
    ("pneumoniamnist-weekly", "configs/pneumoniamnist.yaml"),
    ("breakhis", "configs/breakhis.yaml"),
])
def test_deploy_all_creates_one_deployment_per_config(deployed, name, config):
    deployment = _deployment(deployed, name)
    assert deployment.entrypoint == "flows/ensemble.py:ensemble_flow"
    assert deployment.work_pool_name == POOL
    assert deployment.enforce_parameter_schema is True
    assert "medstack" in deployment.tags and deployment.description
    assert deployment.parameters["config"] == config_parameters(config, str(REPO))["config"]
    schema = deployment.parameter_openapi_schema
    assert schema["definitions"]["RunConfig"]["additionalProperties"] is False  # the UI form is typed and closed


def test_weekly_retrain_is_scheduled_by_cron(deployed):
    deployment = _deployment(deployed, "pneumoniamnist-weekly")
    [schedule] = deployment.schedules
    assert schedule.active
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 1", "Europe/Berlin")
    assert _deployment(deployed, "smoke").schedules == []


@pytest.mark.parametrize("bad_config, message", [
    ({"training": {"epochs": 0}}, "0 is less than the minimum of 1"),
    ({"trainig": {"epochs": 2}}, "trainig"),
    ({"split": {"folds": "five"}}, "'five' is not of type 'integer'"),
])
def test_bad_parameters_are_rejected_before_a_run_exists(deployed, bad_config, message):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment = _deployment(deployed, "smoke")
    count = lambda: len(deployed.client().read_flow_runs(  # noqa: E731
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    ))
    before = count()
    done = deployed.cli("deployment", "run", f"{FLOW}/smoke", "--param", f"config={json.dumps(bad_config)}")
    assert "Validation failed" in done.stdout + done.stderr and message in done.stdout + done.stderr
    assert count() == before


# ------------------------------------------------------------------------------------------------ the runs


def test_deployment_run_completes_every_node_of_the_dag(deployed, smoke_runs):
    first = smoke_runs[0]
    with deployed.client() as client:
        assert client.read_flow_run(first.flow_run_id).state.is_completed()
    tasks = {t.name: t for t in _task_runs(deployed, first.flow_run_id)}
    assert SMOKE_FOLD_TASKS <= set(tasks), sorted(tasks)
    for name in SMOKE_FOLD_TASKS:
        assert tasks[name].state.is_completed() and tasks[name].state.name == "Completed", (name, tasks[name].state)
        assert {"gpu", name[6:].split("|")[0]} <= set(tasks[name].tags)
    for node in ("load_dataset", "make_splits", "make_folds", "gather_oof", "fit_ensembles", "evaluate_on_test",
                 "write_report", "publish_artifacts"):
        assert any(n.startswith(node) and t.state.is_completed() for n, t in tasks.items()), node


def test_run_parameters_override_the_deployment_config(smoke_runs, pneumonia_npz):
    for run in smoke_runs:
        resolved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
        assert resolved["data"]["path"] == str(pneumonia_npz)
        assert Path(resolved["runtime"]["output_dir"]) == run.run_dir.parent
        assert resolved["training"]["epochs"] == 4  # the rest is the deployment's smoke config


def test_artifacts_carry_the_report_the_leaderboard_and_the_folder(deployed, smoke_runs):
    run = smoke_runs[0]
    artifacts = {a.key: a for a in _artifacts(deployed, run.flow_run_id)}
    report = artifacts["ensemble-report"]
    assert report.type == "markdown" and "Test leaderboard" in report.data and "stacking" in report.data
    assert report.data.count("](data:image/png;base64,") >= 4  # ROC, PR, confusion, curves: visible in the UI
    board = artifacts["ensemble-leaderboard"]
    rows = json.loads(board.data) if isinstance(board.data, str) else board.data
    assert board.type == "table"
    assert {r["model"] for r in rows} == {*STRATEGIES, "soft_voting", "stacking"}
    assert all(0.0 <= r["roc_auc"] <= 1.0 for r in rows)
    assert run.run_dir.is_dir() and (run.run_dir / "report.md").is_file()  # the link artifact points at it
    progress = artifacts["ensemble-training-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "2/2 fold trainings finished" in progress.description


def test_gpu_tag_limit_caps_concurrent_trainings(deployed, smoke_runs):
    """With `prefect concurrency-limit create gpu 1`, no two training task runs overlap in time."""
    tasks = [t for t in _task_runs(deployed, smoke_runs[0].flow_run_id) if t.name in SMOKE_FOLD_TASKS]
    spans = sorted((t.start_time, t.end_time) for t in tasks)
    assert len(spans) == 2 and all(start and end for start, end in spans)
    for (_, previous_end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start >= previous_end, spans


def test_cached_rerun_trains_nothing_and_is_quicker(deployed, smoke_runs):
    first, cached = smoke_runs
    tasks = {t.name: t for t in _task_runs(deployed, cached.flow_run_id) if t.name in SMOKE_FOLD_TASKS}
    assert set(tasks) == SMOKE_FOLD_TASKS
    assert {t.state.name for t in tasks.values()} == {"Cached"}  # served from medstack's fold cache
    manifest = json.loads((cached.run_dir / "manifest.json").read_text())
    assert (manifest["trained"], manifest["cache_hits"]) == (0, 2)
    assert json.loads((first.run_dir / "manifest.json").read_text())["trained"] == 2
    print(f"wall time of `prefect deployment run --watch`: first {first.wall_seconds:.1f} s, "
          f"cached {cached.wall_seconds:.1f} s; flow bodies {json.loads((first.run_dir / 'manifest.json').read_text())['wall_seconds']} s "
          f"vs {manifest['wall_seconds']} s")


def test_medstack_serve_runs_deployments_without_a_worker(deployed, smoke_runs):
    """`medstack serve` (flow.serve) registered a deployment of its own and ran it from its own process."""
    deployment = _deployment(deployed, "smoke-served")
    assert deployment.parameters["config"]["name"] == "pneumoniamnist-smoke" and deployment.work_pool_name is None
    with deployed.client() as client:
        served = client.read_flow_run(smoke_runs[1].flow_run_id)
    assert served.deployment_id == deployment.id and served.state.is_completed()
    assert smoke_runs[1].run_dir.parent == smoke_runs[0].run_dir.parent  # the overrides reached it


# ---------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def _screenshot_dir(tmp_path_factory) -> Path:
    wanted = os.environ.get("MEDSTACK_SCREENSHOT_DIR")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_ui_shows_the_run_the_leaderboard_and_the_plots(deployed, smoke_runs, browser, tmp_path_factory):
    shots = _screenshot_dir(tmp_path_factory)
    run = smoke_runs[0]
    artifacts = {a.key: a for a in _artifacts(deployed, run.flow_run_id)}
    page = browser.new_page(viewport={"width": 1400, "height": 1800})

    page.goto(f"{deployed.url}/runs/flow-run/{run.flow_run_id}", wait_until="load")
    page.get_by_text("train[class_weight|fold-1]").first.wait_for(timeout=60_000)  # the DAG's readable task names
    page.screenshot(path=str(shots / "flow-run.png"))

    page.goto(f"{deployed.url}/artifacts/artifact/{artifacts['ensemble-leaderboard'].id}", wait_until="load")
    table = page.locator("table").first
    table.wait_for(timeout=60_000)
    cells = table.locator("td").all_inner_texts()
    assert {"stacking", "soft_voting", "class_weight"} <= {c.strip() for c in cells}, cells[:20]
    page.screenshot(path=str(shots / "leaderboard-artifact.png"))

    page.goto(f"{deployed.url}/artifacts/artifact/{artifacts['ensemble-report'].id}", wait_until="load")
    page.get_by_text("Test leaderboard").first.wait_for(timeout=60_000)
    page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('data:image/png') && i.complete)")
    rendered = page.eval_on_selector_all(
        "img", "els => els.filter(i => i.src.startsWith('data:image/png')).map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert rendered and all(w > 100 and h > 100 for w, h in rendered), rendered  # decoded plots, not broken icons
    page.screenshot(path=str(shots / "report-artifact.png"))
    page.locator("img[src^='data:image/png']").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "report-artifact-plots.png"))  # the UI scrolls inside a pane, not the page
    print(f"screenshots in {shots}: flow-run.png, leaderboard-artifact.png, report-artifact.png, "
          "report-artifact-plots.png")
    page.close()


# --------------------------------------------------------------------------------------------- prediction


def test_predict_deployment_follows_the_registry_alias(deployed, smoke_runs, tmp_path):
    """`prefect deployment run 'medstack-predict/smoke' --param input=...`: the deployment names
    pneumoniamnist-smoke@champion and was created (`prefect deploy --all`) before any run existed; promoting the
    second run makes the next run score with it, no redeploy. (tests/test_predict_flow.py moves the alias between
    two runs in-process.)"""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from medstack.inference.registry import promote

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(40, 220, (28, 28), dtype=np.uint8)).save(incoming / f"{i}.png")
    registry = tmp_path / "registry.json"
    with deployed.client() as client:
        deployment = client.read_deployment_by_name("medstack-predict/smoke")
    assert deployment.parameters == {"model": "pneumoniamnist-smoke@champion"}
    assert deployment.created < min(_flow_run(deployed, run.flow_run_id).start_time for run in smoke_runs)
    run = smoke_runs[1]
    promote(smoke_runs[0].run_dir, "champion", registry=registry)
    promote(run.run_dir, "champion", registry=registry)  # the alias moved on before the predict run
    out = tmp_path / "predictions.csv"
    done = deployed.cli("deployment", "run", "medstack-predict/smoke", "--param", f"input={incoming}",
                        "--param", f"registry={registry}", "--param", f"output={out}", "--watch",
                        "--watch-timeout", "600", timeout=660)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{_tail(deployed, 'worker')}"
    frame = pd.read_csv(out)
    assert len(frame) == 5 and set(frame["run_id"]) == {run.run_dir.name}
    keys = {a.key for a in _artifacts(deployed, _flow_run_id(done.stdout))}
    assert {"predict-class-counts", "predict-least-confident", "predict-heatmaps"} <= keys
