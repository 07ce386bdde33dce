"""``medstack serve-model``: load a bundle once, bind a port (loopback by default), serve it with uvicorn until Ctrl-C.

The socket is bound here, before uvicorn starts, so a port in use is one clear line (exit 2) and ``--port 0`` picks
a free port; the line ``listening on http://HOST:PORT`` is printed once the model is loaded and the port bound. Every
start-up error is a :class:`~medstack.errors.UsageError`, reported by ``medstack.cli.main`` like any other error.
Whether the address needs API keys (:mod:`medstack.serving.keys`) is decided before either.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from medstack.errors import UsageError


class ServeError(UsageError, ValueError):
    """A server that cannot start: limits out of range, a model file the OS cannot read, an address not to bind."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from medstack.console.flags import add_common_flags
    from medstack.inference.registry import REGISTRY_HELP
    from medstack.inference.schema import ENGINE_HELP, ENGINES

    serve = sub.add_parser("serve-model", help="serve a trained ensemble over HTTP (POST /predict, GET /health, GET /model)")
    add_common_flags(serve, quiet="no access log, only the start-up lines and warnings",
                     verbose="debug logs of the HTTP server")
    serve.add_argument("--model", required=True,
                       help="run folder, its model.json, <name>@<alias>, or models:/<name>@<alias> (MLflow)")
    serve.add_argument("--registry", help=REGISTRY_HELP)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only; any other address needs API "
                            "keys or --insecure)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any free port)")
    serve.add_argument("--use", help="model whose label to answer with (default: the run's recommended model)")
    serve.add_argument("--engine", choices=ENGINES, default="fused", help=ENGINE_HELP)
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body (default 32 MB)")
    serve.add_argument("--max-files", type=int, default=256, help="most images in one request (default 256)")
    serve.add_argument("--max-pixels", type=int, default=64_000_000,
                       help="most pixels of one image before resizing (default 64,000,000)")
    serve.add_argument("--max-batch", type=int, default=256,
                       help="concurrent requests are scored together up to this many images (default 256)")
    serve.add_argument("--api-key-file", metavar="PATH",
                       help="file of API keys, one a line (also $MEDSTACK_API_KEYS, comma-separated): every route "
                            "but GET /health then needs 'Authorization: Bearer <key>', on any address; a reload "
                            "re-reads them")
    serve.add_argument("--insecure", action="store_true",
                       help="serve a non-loopback --host without an API key (a warning at start and on /health)")
    serve.set_defaults(handler=serve_model)


def serve_model(args: argparse.Namespace) -> int:
    import contextlib
    import logging

    from medstack.console.errors import debug_enabled
    from medstack.console.quiet import filtered_stderr, logger_level

    with contextlib.ExitStack() as stack:
        stack.enter_context(logger_level("tensorflow", logging.ERROR))
        if not debug_enabled(args.debug):
            stack.enter_context(filtered_stderr())  # TensorFlow's C++ start-up lines, as for `medstack run`
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from functools import partial

    import uvicorn

    from medstack.inference.predict import decision_text
    from medstack.serving.app import create_app
    from medstack.serving.keys import check_exposure, load_api_keys
    from medstack.serving.model import ModelHolder, load_served
    from medstack.serving.uploads import Limits

    try:
        limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_files=args.max_files,
                        max_pixels=args.max_pixels)
    except ValueError as exc:
        raise ServeError(str(exc)) from exc
    # Before the bind and the load: a server that must not start says so at once (an ApiKeyError).
    keys = load_api_keys(args.api_key_file, os.environ)
    warning = check_exposure(args.host, keys is not None, args.insecure)
    if warning:
        print(f"medstack: warning: {warning}", file=sys.stderr, flush=True)
    elif args.insecure and keys is not None:
        print("medstack: --insecure does nothing here: API keys were given, so they are required", file=sys.stderr)
    sock = _bind(args.host, args.port)  # bound now (a port in use fails before the load), listening after it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server's own handler: the load resolves the alias anyway
    signal.signal(signal.SIGTERM, _stop)  # uvicorn re-raises SIGTERM after its graceful shutdown: end cleanly
    try:
        holder = ModelHolder(args.model, args.registry, args.use, max(1, args.max_batch),
                             loader=partial(load_served, engine=args.engine))
        sock.listen(128)
    except _Stopped:  # SIGTERM while loading
        sock.close()
        return 0
    except OSError as exc:
        sock.close()
        raise ServeError(str(exc)) from exc
    except BaseException:  # a BundleError or RegistryError, reported by medstack.cli.main
        sock.close()
        raise
    served = holder.current
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"model: {args.model} -> run {served.run_id} ({served.bundle.root}), loaded in {served.load_seconds:.1f} s",
          file=sys.stderr)
    print(f"labels from {served.model}: {decision_text(served.bundle, served.model)}", file=sys.stderr)
    rereads = " and re-reads the API keys" if keys is not None else ""
    print(f"limits: {limits.max_upload_bytes / 1024 / 1024:g} MB and {limits.max_files} files a request; "
          f"POST /reload or kill -HUP re-resolves the model{rereads}", file=sys.stderr)
    if keys is not None:
        print(f"api keys: {len(keys)} from {keys.sources}; every route but GET /health needs "
              "'Authorization: Bearer <key>'", file=sys.stderr)
    print(f"listening on http://{shown}:{port}  (POST /predict, GET /health, GET /model, docs at /docs)",
          file=sys.stderr, flush=True)
    level = {-1: "warning", 0: "info"}.get(args.verbosity, "debug")  # -q, default (an access line a request), -v
    config = uvicorn.Config(create_app(holder, limits, keys, warning), log_level=level,
                            access_log=args.verbosity >= 0, timeout_graceful_shutdown=10)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):  # uvicorn re-raises Ctrl-C / SIGTERM after its graceful shutdown
        pass
    print(f"stopped serving run {holder.current.run_id}", file=sys.stderr)
    return 0


class _Stopped(Exception):
    """SIGTERM, as re-raised by uvicorn once it has shut down."""


def _stop(signum, frame) -> None:
    raise _Stopped()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror} (another server there? choose --port)") \
            from exc
    sock.set_inheritable(True)
    return sock
