"""``pspnet-serve``: run the server, or segment / evaluate / benchmark from the command line.

    pspnet-serve [--model PATH] [--host H] [--port P] [--max-batch N ...]   serve over HTTP
    pspnet-serve --workers N ...  serve from N processes on one port (service/workers/supervisor.py)
    pspnet-serve segment INPUTS... --out DIR [--output ...] [--ray ...]   offline: files, folders, globs
    pspnet-serve evaluate --model X.onnx --images DIR --labels DIR        mIoU of an artifact
    pspnet-serve describe MODEL.onnx [--tile H W] [--force]   draft MODEL.json for any segmentation ONNX
    pspnet-serve bench --url URL --image IMG [--concurrency N | --rate R]  load generator
    pspnet-serve --version        the versions of this package, ONNX Runtime and Python
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from service.contract.version import VersionAction
from service.settings import Settings, add_settings_flags, settings_from
from service.telemetry import logs

if TYPE_CHECKING:
    from service.repository.workers import WorkerPlace

COMMANDS = ("serve", "segment", "evaluate", "describe", "bench")


def _configure_logging(level: str, fmt: logs.LogFormat = "text") -> None:
    logs.configure(fmt, level)


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pspnet-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction)
    add_settings_flags(parser)
    settings = settings_from(parser.parse_args(argv))
    _configure_logging(settings.log_level, settings.log_format)
    from service.repository.directory import RepositoryError, default_model, scan

    try:
        # fail before binding a port: a missing or corrupt model (or a repository with nothing
        # servable, two artifacts of one name, an unknown default) is a clear one-line error;
        # unusable files of a directory are skipped, and logged once, by the app's first load
        default_model(scan(settings.model), settings.default_model)
    except RepositoryError as e:
        # logged, not printed: in json mode this line, too, is one a log pipeline can read
        logging.getLogger("pspnet.cli").error("cannot serve %s: %s", settings.model, e)
        return 2
    from service.repository.workers import ENV, WorkerPlace

    place = os.environ.get(ENV)
    if place is not None:  # one worker of a supervisor (service/workers/supervisor.py)
        return _run_app(settings, WorkerPlace.from_env(place))
    from service.workers.cores import resolve_workers

    count = resolve_workers(settings)
    if count > 1:
        from service.workers.supervisor import supervise

        return supervise(settings, argv, count)
    return _run_app(settings)


def _run_app(settings: Settings, place: WorkerPlace | None = None) -> int:
    """The app under uvicorn: on its own port, or as a worker on the supervisor's socket."""
    import uvicorn

    from service.api.app import create_app
    from service.repository.workers import WorkerBoard

    app = create_app(settings, board=None if place is None else WorkerBoard(place))
    # access_log off: the middleware writes the one access line per request (service/telemetry/logs.py)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
                            lifespan="on", log_config=logs.uvicorn_log_config(settings.log_format))
    server = uvicorn.Server(config)
    server.run(None if place is None else [socket.socket(fileno=place.fd)])
    # uvicorn returns normally when startup failed; make that an error exit
    return 0 if server.started else 3


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "serve"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "serve":
        return serve(rest)
    if command == "segment":
        from service.offline.segment import segment_main

        return segment_main(rest)
    if command == "evaluate":
        from service.offline.evaluate import evaluate_main

        return evaluate_main(rest)
    if command == "describe":
        from service.describe import describe_main

        return describe_main(rest)
    return _bench(rest)


def _bench(argv: list[str]) -> int:
    # the load generator is not part of the service (the images leave it out): it comes with
    # the `bench` extra, and its absence is a usage message, not a traceback
    try:
        from benchmarks.load.cli import bench_main
    except ModuleNotFoundError as e:
        print(f"pspnet-serve bench: the load generator is not installed ({e.name} is missing); "
              "install it from a checkout with pip install '.[bench]'", file=sys.stderr)
        return 2
    code: int = bench_main(argv)
    return code


if __name__ == "__main__":
    sys.exit(main())
