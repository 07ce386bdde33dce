"""The HTTP service: ``POST /predict``, ``GET /health``, ``GET /model``, ``POST /reload`` over a :class:`ModelHolder`.

Bad input is always a 4xx with ``{"detail": message}``: 413 (upload, file count or image too large), 415 (not an
image type, not multipart), 422 (undecodable, empty, no ``files`` field), 400 (malformed multipart, from Starlette). A request's images are decoded off the
event loop, then scored as one batch through the fused ensemble; concurrent requests share batches
(:class:`medstack.serving.model.BatchScorer`). SIGHUP reloads like ``POST /reload``.

Given API keys (:mod:`medstack.serving.keys`), every route but ``GET /health`` needs ``Authorization: Bearer <key>``;
a missing or wrong key is a 401 with ``WWW-Authenticate: Bearer`` and the same body either way, and is logged with
the client's address and the path, never the key. /docs and /openapi.json stay open: they describe the routes (the
published API of medstack), not the model, and the docs page is where the key is entered. A reload re-reads the keys.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import medstack
from medstack.inference.predict import confidence, decision_text
from medstack.inference.trust import NO_TRUST
from medstack.models.decision import apply_decision
from medstack.serving.keys import ApiKeys
from medstack.serving.model import ModelHolder, ServedModel
from medstack.serving.uploads import DecodedUpload, Limits, UploadRejected, decode_upload

log = logging.getLogger("medstack.serving")
FIELD = "files"
UNAUTHORIZED = "this server needs an API key: send the header 'Authorization: Bearer <key>'"


class Prediction(BaseModel):
    file: str = Field(description="the uploaded file name")
    predicted: str = Field(description="the served model's label under its decision")
    probabilities: dict[str, float] = Field(description="the served model's probability of every class")
    confidence: float = Field(description="distance from flipping the label: |P(positive) - threshold| for a "
                                          "threshold, else the margin of the best class's (offset) log-probability")
    models: dict[str, dict[str, float]] = Field(description="every model the engine scored (the run's, or with "
                                                "--engine student the student alone): class -> probability")
    warnings: list[str] = Field(description="input drift: how this image differs from the training images")
    sets: dict[str, list[str]] | None = Field(
        default=None, description="the served model's conformal prediction set at every calibrated level, keyed as "
                                  "medstack predict's columns (set_90: the classes in the 90% set; [] when no class "
                                  "is plausible); null for a bundle without conformal calibration")
    p_values: dict[str, float] | None = Field(default=None, description="conformal p-value of every class")
    refer: bool | None = Field(default=None, description="whether the referral rule hands this image to a person")
    refer_reason: str | None = Field(default=None, description="why it is referred ('' when it is not)")


class PredictResponse(BaseModel):
    run_id: str
    model: str = Field(description="the model whose label is 'predicted' (the run's recommendation unless --use)")
    decision: dict[str, Any] = Field(description="the decision from model.json plus a readable 'text'")
    classes: list[str]
    predictions: list[Prediction]
    note: str | None = Field(default=None, description="said when the bundle has no conformal calibration")


def create_app(holder: ModelHolder, limits: Limits = Limits(), keys: ApiKeys | None = None,
               warning: str | None = None) -> FastAPI:
    """The app over ``holder``; ``keys``: the API keys every route but /health needs (none: open); ``warning``: a
    line that /health carries (serving exposed without a key)."""
    started = time.time()
    counts = {"requests": 0, "images": 0, "rejected": 0}
    guard = _key_guard(keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

        def on_hangup() -> None:
            task = loop.create_task(_reload_logged())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no SIGHUP
            pass
        yield
        holder.close()

    def reload_keys() -> dict[str, Any] | None:
        if keys is None:
            return None
        event = keys.reload()
        state = "changed" if event["changed"] else "unchanged"
        log.warning("api keys: %s", event["kept"] or f"{event['keys']} valid ({state})")
        return event

    async def _reload_logged() -> None:
        await run_in_threadpool(reload_keys)
        try:
            event = await run_in_threadpool(holder.reload)
            log.warning("reload: %s", event)
        except Exception as exc:
            log.error("reload failed, still serving run %s: %s", holder.current.run_id, exc)

    app = FastAPI(title="medstack", version=medstack.__version__, lifespan=lifespan,
                  description="An ensemble trained by medstack, served over HTTP.")

    @app.get("/health")
    def health() -> dict[str, Any]:
        served = holder.current
        answer = {"status": "ok", "run_id": served.run_id, "model": served.model,
                  "uptime_s": round(time.time() - started, 1), **counts}
        return {**answer, "warning": warning} if warning else answer

    @app.get("/model", dependencies=guard)
    def model() -> dict[str, Any]:
        served = holder.current
        batcher = served.batcher
        return {**served.bundle.summary(), "served": {
            "reference": holder.ref, "model": served.model, "decision": _decision(served),
            "loaded_at": served.loaded_at, "load_seconds": served.load_seconds, "reloads": holder.reloads,
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_files": limits.max_files,
                       "max_pixels": limits.max_pixels, "max_batch": batcher.max_batch},
            "scoring": {"calls": batcher.calls, "images": batcher.images, "largest_batch": batcher.largest_batch},
        }}

    @app.post("/reload", dependencies=guard)
    async def reload() -> dict[str, Any]:
        key_event = await run_in_threadpool(reload_keys)  # before the model: a failed model reload still rotates keys
        try:
            event = await run_in_threadpool(holder.reload)
            return event if key_event is None else {**event, "api_keys": key_event}
        except Exception as exc:  # a broken registry or bundle, or a failed trace: the old model keeps serving
            raise HTTPException(409, f"cannot reload {holder.ref}: {exc}; still serving run "
                                     f"{holder.current.run_id}") from exc

    @app.post("/predict", response_model=PredictResponse, dependencies=guard,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": [FIELD], "properties": {FIELD: {
                      "type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def predict(request: Request) -> PredictResponse:
        counts["requests"] += 1
        try:
            uploads = await _read_uploads(request, limits)
            with holder.use() as served:
                decoded = await run_in_threadpool(_decode_all, uploads, served, limits)
                scores = await asyncio.wrap_future(served.batcher.submit(np.stack([d.pixels for d in decoded])))
                response = _response(served, decoded, scores)
        except UploadRejected as exc:
            counts["rejected"] += 1
            raise HTTPException(exc.status, exc.message) from exc
        except ClientDisconnect as exc:  # the client went away mid-upload: nobody to answer, nothing to log
            raise HTTPException(400, "client disconnected during the upload") from exc
        counts["images"] += len(decoded)
        return response

    return app


def _key_guard(keys: ApiKeys | None) -> list:
    """The dependency that refuses a request without a valid key (none without keys): an HTTP bearer scheme, so the
    OpenAPI page shows it and its Authorize button sends the key."""
    if keys is None:
        return []
    bearer = HTTPBearer(auto_error=False, scheme_name="api_key",
                        description="a key of the server's --api-key-file or $MEDSTACK_API_KEYS")

    async def require_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if keys.check(credentials.credentials if credentials else None):
            return
        client = f"{request.client.host}:{request.client.port}" if request.client else "an unknown client"
        log.warning("refused %s %r from %s: %s", request.method, request.url.path, client,
                    "no bearer key" if credentials is None else "a key that is not valid")
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    return [Security(require_key)]


async def _read_uploads(request: Request, limits: Limits) -> list[tuple[str, str | None, bytes]]:
    """(file name, content type, bytes) of every part of the ``files`` field, within the limits."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise UploadRejected(413, f"upload of {int(declared):,} bytes is more than this server's limit of "
                                  f"{limits.max_upload_bytes:,} bytes")
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        raise UploadRejected(415, f"send images as multipart/form-data in the field '{FIELD}' "
                                  f"(curl -F {FIELD}=@scan.png ...); got {kind or 'no content type'}")
    limited = Request(request.scope, _bounded(request.receive, limits.max_upload_bytes))
    try:  # stop parsing at the first file past the limit (Starlette answers that with a 400)
        form = await limited.form(max_files=limits.max_files, max_fields=16)
    except StarletteHTTPException as exc:  # Starlette's own class: FastAPI's HTTPException is a subclass of it
        if exc.status_code == 400 and "Too many files" in str(exc.detail):
            raise UploadRejected(413, f"more than {limits.max_files} files in one request; this server takes at "
                                      f"most {limits.max_files}") from exc
        raise
    try:
        parts = form.getlist(FIELD)
        files = [p for p in parts if hasattr(p, "read")]
        others = sorted({k for k, v in form.multi_items() if k != FIELD and hasattr(v, "read")})
        if others:
            raise UploadRejected(422, f"files sent in field(s) {others}; send images in the field '{FIELD}'")
        if len(files) != len(parts):
            raise UploadRejected(422, f"the field '{FIELD}' must hold files, not text")
        if not files:
            raise UploadRejected(422, f"no images: send them in the multipart field '{FIELD}' "
                                      f"(curl -F {FIELD}=@scan.png ...)")
        return [(f.filename or f"file {i + 1}", f.content_type, await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


def _bounded(receive, limit: int):
    """``receive`` that refuses a body growing past ``limit`` bytes (a client may send no Content-Length)."""
    seen = 0

    async def bounded():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise UploadRejected(413, f"upload is more than this server's limit of {limit:,} bytes")
        return message

    return bounded


def _decode_all(uploads: list[tuple[str, str | None, bytes]], served: ServedModel, limits: Limits) -> list[DecodedUpload]:
    shape, stats = served.bundle.input_shape, served.bundle.meta["training_statistics"]
    return [decode_upload(name, kind, data, shape, stats, limits) for name, kind, data in uploads]


def _decision(served: ServedModel) -> dict[str, Any]:
    return {**served.decision, "text": decision_text(served.bundle, served.model)}


def _response(served: ServedModel, decoded: list[DecodedUpload], scores: dict) -> PredictResponse:
    classes = served.bundle.classes
    chosen = scores[served.model]
    labels = apply_decision(chosen, served.decision)
    margins = confidence(chosen, served.decision)
    trust = served.bundle.trust(served.model, chosen)

    def named(row) -> dict[str, float]:
        return {name: float(p) for name, p in zip(classes, row)}

    return PredictResponse(
        run_id=served.run_id, model=served.model, decision=_decision(served), classes=classes,
        predictions=[Prediction(file=d.name, predicted=classes[int(labels[i])], probabilities=named(chosen[i]),
                                confidence=float(margins[i]),
                                models={m: named(scores[m][i]) for m in served.bundle.models if m in scores},
                                warnings=d.warnings,
                                **(trust.row(i) if trust is not None else {}))
                     for i, d in enumerate(decoded)],
        note=None if trust is not None else NO_TRUST)
