"""``pspnet-serve``: run the server, or segment / evaluate / benchmark from the command line.

    pspnet-serve [--model PATH] [--host H] [--port P] [--max-batch N ...]   serve over HTTP
    pspnet-serve segment IMAGES... --out DIR [--mode ...] [--output ...]  offline, same engine
    pspnet-serve evaluate --model X.onnx --images DIR --labels DIR        mIoU of an artifact
    pspnet-serve bench --url URL --image IMG [--concurrency N | --rate R]  load generator
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from service.settings import Settings

COMMANDS = ("serve", "segment", "evaluate", "bench")


def add_settings_flags(parser: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None) -> None:
    """One ``--flag`` per Settings field; unset flags leave the environment's value."""
    for name, field in Settings.model_fields.items():
        if only is not None and name not in only:
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"setting_{name}", default=None,
                            metavar=name.upper(),
                            help=f"{field.description} (env PSPNET_{name.upper()})")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with flags on top; a bad value exits 2 with the reason."""
    overrides: dict[str, Any] = {k.removeprefix("setting_"): v for k, v in vars(args).items()
                                 if k.startswith("setting_") and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"  PSPNET_{field.upper()} / --{field.replace('_', '-')}: {err['msg']}")
        print("pspnet-serve: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pspnet-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_flags(parser)
    settings = settings_from(parser.parse_args(argv))
    _configure_logging(settings.log_level)
    from service.artifact import ArtifactError, read_meta

    try:
        # fail before binding a port: a missing or corrupt model is a clear one-line error
        read_meta(settings.model)
    except ArtifactError as e:
        print(f"pspnet-serve: cannot serve {settings.model}: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
                            lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally when startup failed; make that an error exit
    return 0 if server.started else 3


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "serve"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "serve":
        return serve(rest)
    if command == "segment":
        from service.offline import segment_main

        return segment_main(rest)
    if command == "evaluate":
        from service.evaluate import evaluate_main

        return evaluate_main(rest)
    from service.bench import bench_main

    code: int = bench_main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
