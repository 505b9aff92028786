"""Service settings: environment variables with the ``PSPNET_`` prefix.

Built in ``main`` (never at import) and validated there: a bad value stops the
server with a message naming the variable. Every field is also a flag of
``pspnet-serve`` (``--max-batch`` for ``PSPNET_MAX_BATCH`` ...).

Tested by tests/deploy/test_reference_tables.py (every field and default documented),
tests/service/test_e2e.py (a bad setting stops the server) and tests/service/telemetry/test_logs.py
(a setting from the environment).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def shipped_model(name: str = "pspnet_camvid.onnx") -> Path:
    """A shipped artifact: the checkout's ``weights/`` (a clone, an editable install), else the
    package data of an installed wheel (``pspnet_weights``, see setup.py). When neither has it,
    the checkout's path, which the ``model`` setting then reports as not found."""
    checkout = Path(__file__).resolve().parent.parent / "weights" / name
    if checkout.is_file():
        return checkout
    spec = importlib.util.find_spec("pspnet_weights")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return checkout


#: the default model (the images copy it to /app/weights and name it in PSPNET_MODEL)
DEFAULT_MODEL = shipped_model()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PSPNET_", extra="ignore", protected_namespaces=())

    model: Path = Field(DEFAULT_MODEL, description="ONNX artifact to serve (exported by pspnet-model), or a "
                        "directory of them: each served under its metadata name")
    default_model: str | None = Field(
        None, description="the model /v1/segment serves when the repository holds several "
        "(default: the only one)")
    max_consecutive_failures: int = Field(
        3, ge=1, description="a model whose batches fail this many times in a row stops being ready")
    probe_interval_s: float = Field(
        10.0, gt=0, description="how often a failing model gets a probe batch (success restores it)")
    host: str = Field("0.0.0.0", description="bind address")
    port: int = Field(8000, ge=1, le=65535, description="bind port")
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="execution provider: auto = CUDA when available, else CPU")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = one per core)")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads")
    sessions: int = Field(1, ge=1, le=64, description="ONNX Runtime sessions running batches side by side; "
                          "intra-op threads 0 then gives each cores // sessions threads")
    ort_spin: bool = Field(False, description="let ONNX Runtime's CPU threads busy-wait between ops: "
                           "lower latency when the cores are the model's alone, less throughput under load")
    device_stitch: Literal["auto", "on", "off"] = Field(
        "auto", description="stitch on the device the batches ran on (softmax, window sums, resize, argmax "
        "in float32; logits never come to the host): auto = with CUDA; on = also on the CPU; off = the "
        "exact float64 stitch on the host")
    device_stitch_mb: int = Field(
        4096, ge=0, description="device memory the stitches of the whole server (every worker, every model) "
        "may hold at once; a request that does not fit now is stitched on the host")
    cpu_workers: int = Field(2, ge=1, le=64,
                             description="threads for decode, resize, stitch and encode (in each worker)")
    workers: int | Literal["auto"] = Field(
        "auto", description="server processes, each with its own sessions, sharing one port, one "
        "/metrics, one memory bound (1 to 64): auto = 1 on the CPU, with CUDA the cores this process "
        "may use (affinity, cgroup quota), at most 16")
    max_batch: int = Field(4, ge=1, le=256, description="most tiles in one inference batch")
    max_wait_ms: float = Field(2.0, ge=0, le=1000,
                               description="how long a batch waits for more tiles after its first")
    max_queue_tiles: int = Field(256, ge=1, description="bound of the tile queue; beyond it requests get 503")
    max_queue_delay_s: float = Field(
        5.0, gt=0, description="bound of the queue in time (work ahead at the measured speed); beyond it 503")
    request_timeout_s: float = Field(60.0, gt=0, description="per-request deadline (504 when exceeded)")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest accepted upload (413)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest accepted image, width x height (413)")
    max_memory_mb: int = Field(
        4096, ge=1, description="memory the requests in flight may hold together, estimated from each "
        "image's header before decoding: beyond it 503, a request that alone exceeds it 413")
    max_output_mb: int = Field(
        256, ge=1, description="largest soft output one request may ask for (output=confidence or "
        "probability: 4 bytes a pixel; /v2 probabilities: 2 bytes a pixel and class), known from the "
        "image's header before decoding: beyond it 413")
    max_scales: int = Field(8, ge=1, le=32, description="most scales one request may ask for")
    warmup: bool = Field(True, description="run every batch size once before reporting ready")
    auth_token: SecretStr | None = Field(
        None, description="if set, the model routes require 'Authorization: Bearer <token>': /v1/models, "
        "/v1/models/{name}, /v1/segment, /v1/models/{name}/segment, /v1/admin/reload (which exists only "
        "then), /v2/models/stats, every /v2/models/{name}/... route (metadata, ready, config, stats, "
        "infer) and /v2/repository/index; /, /docs, /openapi.json, /healthz, /readyz, /metrics, /v2, "
        "/v2/health/live and /v2/health/ready stay open")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines: text for people, or json (one object a line, uvicorn's too) "
        "for a log pipeline")
    jpeg_quality: int = Field(90, ge=1, le=100, description="quality of JPEG overlays")
    overlay_alpha: float = Field(0.5, ge=0, le=1, description="weight of the mask in overlays")

    @field_validator("auth_token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        # fail closed: an empty PSPNET_AUTH_TOKEN= (as compose files often leave it) would otherwise
        # turn auth on with an empty secret that "Authorization: Bearer " matches
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is set but empty; give a token, or unset it to turn auth off")
        return v

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= int(v) <= 64:
            raise ValueError("must be auto or a whole number from 1 to 64")
        return v

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: Path) -> Path:
        if not (v.is_file() or v.is_dir()):
            raise ValueError(f"model file or directory not found: {v}")
        return v


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
