"""Export a PSPNet to the self-describing ONNX artifact of docs/DESIGN.md ("The seam").

The graph takes ``image`` float32 ``[N, 3, H, W]`` (RGB, 0..255, fixed tile,
dynamic batch), normalises it inside, and returns ``logits`` ``[N, C, H, W]``
at full tile resolution and ``labels`` ``[N, H, W]``, their argmax over classes
(first class on ties; uint8, uint16 beyond 256 classes), appended to the
exported graph by :func:`model.labels_output.add_labels_output`.
``metadata_props["pspnet"]`` holds the :class:`service.contract.artifact.ArtifactMeta`
JSON. The exporter checks its own work: ONNX checker, then ONNX Runtime against
eager PyTorch on a random batch of 2 (logits within tolerance; labels equal to
PyTorch's argmax wherever the measured logit error cannot swap the two best
classes); on any failure nothing is written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from model.labels_output import add_labels_output
from model.pspnet import PSPNet
from service.contract.artifact import (
    INPUT_NAME,
    LABELS_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ArtifactError,
    ArtifactMeta,
    InferenceProtocol,
    parse_meta,
    read_meta,
    read_outputs,
)

log = logging.getLogger("pspnet.export")
Progress = Callable[[str], None]
# Both exporters pass the same checks below (signature, checker, parity). TorchScript is
# the default: its fixed cost is far lower (tiny PSPNet, CPU seconds: 0.5 vs 4.5 warm,
# 1.0 vs 8.3 cold), PSPNet-50 costs the same (9.2 vs 10.2 CPU s at 473), and torch is
# pinned. "dynamo" is the maintained path, for when TorchScript export goes away.
Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
TORCHSCRIPT_OPSET = 17
_PROTOBUF_LIMIT = 2**31 - 1  # one-file ONNX cannot be larger
# Default parity bound: |ORT - eager| <= ATOL + RTOL * max|eager|. Measured errors are
# around 1e-6 of the logit range (README of the reference fixtures: ORT ~1e-6), so
# this refuses real breakage (a wrong op, a wrong pooling) and nothing else.
ATOL = 1e-4
RTOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph is malformed or does not compute what PyTorch computes."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    tile: tuple[int, int]
    max_abs_error: float  # ONNX Runtime vs eager PyTorch, batch of 2 random tiles
    reference_max: float  # largest |logit| of the eager run, for scale
    tolerance: float
    label_pixels: int  # pixels of the parity batch
    label_flips: int  # of those, ORT's labels differ from PyTorch's argmax (all at near-ties)
    export_seconds: float  # torch.onnx.export and ONNX checker
    exporter: Exporter
    check_seconds: float  # ONNX Runtime and eager PyTorch runs
    bytes: int


def stride8_size(tile: tuple[int, int]) -> tuple[int, int]:
    """Feature size of the backbone for a tile: three stride-2 steps (stem, pool, layer2), ceil each."""
    h, w = tile
    for _ in range(3):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def artifact_meta(model: PSPNet, info: DatasetInfo, *, name: str, source: dict[str, object],
                  tile: tuple[int, int] | None = None,
                  mean: tuple[float, float, float] = IMAGENET_MEAN,
                  std: tuple[float, float, float] = IMAGENET_STD) -> ArtifactMeta:
    """The metadata for ``model`` on dataset ``info``; ``tile`` overrides the dataset default."""
    if model.config.num_classes != info.num_classes:
        raise ValueError(f"the model has {model.config.num_classes} classes, {info.name} has "
                         f"{info.num_classes}")
    protocol = InferenceProtocol(mode=info.mode, base_size=info.base_size,  # type: ignore[arg-type]
                                 scales=info.scales, stride_rate=info.stride_rate, flip=info.flip)
    return ArtifactMeta(
        name=name, dataset=info.name, classes=info.classes, palette=info.palette,
        tile=tile or info.tile, mean=mean, std=std, align_corners=model.config.align_corners,
        protocol=protocol, source=dict(source),
        # JSON-normal (tuples as lists) so the metadata equals its own parse
        extra={"architecture": json.loads(json.dumps(model.config.to_dict()))},
    )


class ServingGraph(nn.Module):
    """What the artifact computes: raw RGB 0..255 in, full-resolution logits out."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: PSPNet, mean: tuple[float, float, float],
                 std: tuple[float, float, float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # (x - mean) / std in float32, the same arithmetic as the published input recipes
        logits: torch.Tensor = self.model((image - self.mean) / self.std)["out"]
        return logits


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Both exporters log and warn about things that do not concern a user
    (TorchScript's deprecation, tracer notes on constant shapes, graph passes)."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _to_onnx(graph: ServingGraph, tile: tuple[int, int], exporter: Exporter) -> onnx.ModelProto:
    # The example batch differs from the parity check's 2, so that check proves the batch is
    # dynamic: 1 keeps TorchScript's tracing run cheap; torch.export would specialise 1 away.
    example = torch.zeros(1 if exporter == "torchscript" else 3, 3, *tile)
    with _quiet_exporter(), torch.no_grad():
        if exporter == "torchscript":
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "model.onnx"
                torch.onnx.export(graph, (example,), target, dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
                return onnx.load(target)
        program = torch.onnx.export(
            graph, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, dynamo=True,
            external_data=False, optimize=True, verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def _declare_output(proto: onnx.ModelProto, tile: tuple[int, int], classes: int) -> None:
    """State the output shape [batch, C, H, W]: TorchScript leaves Resize's output symbolic.

    The declaration is checked, not trusted: the ONNX checker's shape inference
    must agree, and the parity run compares the actual output shape.
    """
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    shape = proto.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = batch
    for size in (classes, *tile):
        shape.dim.add().dim_value = size


def _check_signature(proto: onnx.ModelProto, tile: tuple[int, int], classes: int) -> None:
    """One input ``image`` [batch, 3, H, W] with a symbolic batch; outputs ``logits``
    [batch, C, H, W] and ``labels`` [batch, H, W], one batch symbol throughout."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    outputs = list(proto.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME, LABELS_NAME]:
        raise ExportError(f"graph signature {[i.name for i in inputs]} -> {[o.name for o in outputs]}, "
                          f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}, {LABELS_NAME!r}]")
    batch = inputs[0].type.tensor_type.shape.dim[0].dim_param if inputs[0].type.tensor_type.shape.dim else ""
    for value, inner in ((inputs[0], [3, *tile]), (outputs[0], [classes, *tile]), (outputs[1], list(tile))):
        dims = value.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(dims) != 1 + len(inner) or not batch or dims[0].dim_param != batch or static[1:] != inner:
            raise ExportError(f"{value.name} has shape {[d.dim_param or d.dim_value for d in dims]}, "
                              f"expected [batch, {', '.join(map(str, inner))}]")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{len(external)} initializers use external data; the artifact must be one file")


def export_onnx(model: PSPNet, meta: ArtifactMeta, path: Path | str, *, atol: float = ATOL,
                rtol: float = RTOL, seed: int = 0, exporter: Exporter = "torchscript",
                progress: Progress | None = None) -> ExportReport:
    """Export ``model`` at ``meta.tile``, verify it, and write ``path`` (only if it passes).

    ``model`` is left as it was: the export freezes the pyramid pooling of a copy.
    """
    path = Path(path)
    step = progress or (lambda _stage: None)
    # the metadata must survive the service's own validation before anything is built
    raw_meta = json.dumps(meta.to_json())
    parsed = parse_meta(raw_meta)
    if parsed != meta:
        raise ExportError("the metadata does not round-trip through service.contract.artifact.parse_meta")
    if meta.align_corners != model.config.align_corners or meta.num_classes != model.config.num_classes:
        raise ExportError("the metadata's classes or align_corners disagree with the model")
    tile = meta.tile

    step("exporting ONNX")
    start = time.perf_counter()
    frozen = copy.deepcopy(model).eval()
    # exact adaptive pooling as constant matrices: any tile exports, divisible or not
    frozen.ppm.freeze_input_size(*stride8_size(tile))
    proto = _to_onnx(ServingGraph(frozen, meta.mean, meta.std).eval(), tile, exporter)
    del frozen
    proto.metadata_props.add(key=METADATA_KEY, value=raw_meta)
    step("checking the graph")
    _declare_output(proto, tile, meta.num_classes)
    add_labels_output(proto.graph, meta.num_classes)
    _check_signature(proto, tile, meta.num_classes)
    blob = proto.SerializeToString()
    if len(blob) > _PROTOBUF_LIMIT:
        raise ExportError(f"the model is {len(blob)} bytes, over protobuf's 2 GiB one-file limit")
    onnx.checker.check_model(proto, full_check=True)
    export_seconds = time.perf_counter() - start

    step("ONNX Runtime vs PyTorch")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    batch = (rng.random((2, 3, *tile), dtype=np.float32) * 255.0).astype(np.float32)
    got, labels = run_onnx_outputs(blob, batch)
    with torch.no_grad():
        want = ServingGraph(model.eval(), meta.mean, meta.std)(torch.from_numpy(batch)).numpy()
    if got.shape != want.shape:
        raise ExportError(f"ONNX Runtime returned {got.shape}, PyTorch {want.shape}")
    error = float(np.abs(got.astype(np.float64) - want).max())
    reference_max = float(np.abs(want).max())
    tolerance = atol + rtol * reference_max
    if not math.isfinite(error) or error > tolerance:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {error:.3g} (tolerance {tolerance:.3g}); "
                          "nothing written")
    flips = _check_labels(labels, got, want, error)
    check_seconds = time.perf_counter() - start

    step("writing")
    _write(path, blob)
    log.info("wrote %s: %d bytes, parity %.3g", path, len(blob), error)
    return ExportReport(path=path, tile=tile, max_abs_error=error, reference_max=reference_max,
                        tolerance=tolerance, label_pixels=labels.size, label_flips=flips,
                        export_seconds=export_seconds, exporter=exporter, check_seconds=check_seconds,
                        bytes=len(blob))


def _write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)  # atomic: a reader never sees half an artifact


def add_labels(src: Path, dst: Path, *, seed: int = 0) -> int:
    """Write the artifact ``src`` to ``dst`` with the ``labels`` output appended; returns its size.
    An ``src`` that is no artifact, or has ``labels`` already, raises ArtifactError.

    For artifacts exported before ``labels`` existed: everything else (weights,
    graph, metadata) is kept as it is, so the logits are bit-identical, which a
    re-export need not give (PyTorch folds batch norms into convolutions with
    CPU-dependent rounding). Checked on 2 random tiles: the same logits as ``src``,
    bit for bit, and labels equal to their argmax. ``dst`` may be ``src``.
    """
    meta, outputs = read_meta(src), read_outputs(src)
    if outputs.has_labels:
        raise ArtifactError(f"{src} already has a {LABELS_NAME!r} output")
    proto = onnx.load(str(src))
    add_labels_output(proto.graph, meta.num_classes)
    onnx.checker.check_model(proto, full_check=True)
    blob = proto.SerializeToString()
    batch = np.random.default_rng(seed).random((2, 3, *meta.tile), dtype=np.float32) * np.float32(255)
    logits, labels = run_onnx_outputs(blob, batch)
    if not np.array_equal(logits, run_onnx(src, batch)):
        raise ExportError(f"appending {LABELS_NAME!r} changed the logits; nothing written")
    _check_labels(labels, logits, logits, 0.0)
    _write(dst, blob)
    return len(blob)


def _check_labels(labels: np.ndarray, got: np.ndarray, want: np.ndarray, error: float) -> int:
    """``labels`` (ORT) against the logits; returns how many differ from PyTorch's argmax.

    Against ORT's own logits they must be equal everywhere: that is what the two
    nodes compute. Against PyTorch's, a pixel may differ only where its two best
    logits are within 2 * ``error`` (each may be off by ``error``, in opposite
    directions). Given the first check and the logit bound the second cannot fail
    by itself; it states the end-to-end guarantee and counts the legitimate flips.
    """
    n, classes, h, w = got.shape
    expected = np.uint8 if classes <= 256 else np.uint16
    if labels.dtype != expected or labels.shape != (n, h, w):
        raise ExportError(f"{LABELS_NAME!r} is {labels.dtype} {labels.shape}, expected "
                          f"{np.dtype(expected).name} {(n, h, w)}; nothing written")
    if not np.array_equal(labels, got.argmax(axis=1)):
        raise ExportError(f"{LABELS_NAME!r} differs from the argmax of {OUTPUT_NAME!r} on "
                          f"{int(np.count_nonzero(labels != got.argmax(axis=1)))} pixels; nothing written")
    differ = labels != want.argmax(axis=1)
    if not differ.any():
        return 0
    top2 = np.partition(want.astype(np.float64), classes - 2, axis=1)[:, classes - 2:]
    swappable = top2[:, 1] - top2[:, 0] <= 2 * error
    unexplained = int(np.count_nonzero(differ & ~swappable))
    if unexplained:
        raise ExportError(f"{LABELS_NAME!r} differs from PyTorch's argmax on {unexplained} pixels whose two "
                          f"best logits are more than 2 x {error:.3g} apart; nothing written")
    return int(np.count_nonzero(differ))


def run_onnx_outputs(model: bytes | Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, labels)`` from ONNX Runtime on CPU (the reference provider for parity)."""
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    logits, labels = session.run([OUTPUT_NAME, LABELS_NAME], {INPUT_NAME: batch})
    return logits, labels


def run_onnx(model: bytes | Path, batch: np.ndarray) -> np.ndarray:
    """Logits from ONNX Runtime on CPU (the reference provider for parity)."""
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    return out
