"""Static int8 quantisation of an artifact with ONNX Runtime, calibrated on real images.

Why: on a CPU the network is nearly all of a request's cost, and int8
convolutions (VNNI/AMX) run it faster than float32 can. For the shipped CamVid
model on the 2-core benchmark machine: 2.8x per tile on an AMD EPYC with
AVX-512 VNNI (16.4 vs 45.6 ms), and CamVid val mIoU 67.81 vs 67.61 for float32
(weights/README.md).

What it does: ONNX Runtime's pre-processing (shape inference, graph
optimisation: batch norms folded into convolutions), then QDQ quantisation:
weights int8 per output channel in a 7-bit range ([-64, 64], ``reduce_range``),
activations uint8 per tensor with MinMax ranges observed on ``images`` resized
to the tile. The 7 bits keep the logits the same across x86-64 CPUs: without
VNNI (AVX2), ONNX Runtime's uint8 x int8 kernels add pairs of products in a
saturating int16 (vpmaddubsw), which full-range weights overflow (255 * 127 * 2
> 32767) and 7-bit ones cannot (255 * 64 * 2 = 32640); measured, an AVX2 CPU then
computes the VNNI logits bit for bit. :class:`Int8Settings` says why not the
other ways out. The result keeps the
artifact contract: the same ``image``/``logits`` names and shapes, float32 in
and out, the same metadata with ``source["quantization"]`` added; the service
serves it like any other artifact. The float32 artifact stays the reference
for parity with the official code: int8 changes logits, so it is checked by
what it predicts (label agreement with float32 on the calibration tiles),
not by a logit bound.

The ``labels`` output (the argmax of ``logits``) is taken off before
quantisation and appended again afterwards, to the int8 graph's float
``logits``: ArgMax stays a float op outside every Q/DQ pair, whatever a
version of the quantiser would do with it, calibration sees only the network,
and an artifact exported before ``labels`` existed gets them too.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model.labels_output import add_labels_output
from service.contract.artifact import (
    INPUT_NAME,
    LABELS_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ArtifactMeta,
    parse_meta,
    read_meta,
)
from service.contract.folders import IMAGE_SUFFIXES

Progress = Callable[[], None]
#: Calibration images used by default: the shipped model's ranges settle well before this
#: (CamVid val mIoU 67.81 with 32 train images, float32 67.61; with full-range int8 weights 67.88;
#: the model before it: 63.23 vs 63.14).
DEFAULT_IMAGES = 32


class QuantizeError(RuntimeError):
    """The input is not a float artifact, or the calibration images are unusable."""


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    images: int
    label_agreement: float  # share of calibration pixels whose int8 label equals the float32 one
    seconds: float
    bytes: int
    sha256: str


def pick_images(folder: Path, count: int) -> list[Path]:
    """``count`` images spread evenly over the sorted contents of ``folder`` (deterministic)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QuantizeError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if count >= len(files):
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def calibration_tile(path: Path, tile: tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W) float32 RGB 0..255: ``path`` resized to the tile, as the graph takes it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise QuantizeError(f"cannot read {path} as an image")
    h, w = tile
    rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)


class _Tiles(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, tiles: Sequence[np.ndarray], tick: Progress | None) -> None:
        self._tiles = iter(tiles)
        self._tick = tick

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._tiles, None)
        if tile is None:
            return None
        if self._tick:
            self._tick()
        return {INPUT_NAME: tile}


def _labels(model: Path | bytes, tiles: Sequence[np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.stack([session.run([OUTPUT_NAME], {INPUT_NAME: t})[0].argmax(axis=1) for t in tiles])


def _checked_labels(model: bytes, tiles: Sequence[np.ndarray]) -> np.ndarray:
    """The graph's ``labels`` output, which must be exactly the argmax of its own ``logits``."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = []
    for tile in tiles:
        logits, labels = session.run([OUTPUT_NAME, LABELS_NAME], {INPUT_NAME: tile})
        if not np.array_equal(labels, logits.argmax(axis=1)):
            raise QuantizeError(f"the int8 graph's {LABELS_NAME!r} differ from the argmax of its "
                                f"{OUTPUT_NAME!r}; nothing written")
        out.append(labels)
    return np.stack(out)


def without_labels(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` without the ``labels`` output and its two nodes (Cast of ArgMax,
    as :func:`service.contract.artifact.read_meta` has checked); ``proto`` itself if it has none."""
    if not any(o.name == LABELS_NAME for o in proto.graph.output):
        return proto
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    g = bare.graph
    cast = next(n for n in g.node if LABELS_NAME in n.output)
    argmax = next(n for n in g.node if cast.input[0] in n.output)
    dropped = {*cast.output, *argmax.output}
    if any(set(n.input) & dropped for n in g.node if LABELS_NAME not in n.output):
        raise QuantizeError(f"the graph uses its {LABELS_NAME!r} head for more than that output")
    nodes = [n for n in g.node if not set(n.output) & dropped]
    outputs = [o for o in g.output if o.name != LABELS_NAME]
    infos = [v for v in g.value_info if v.name not in dropped]
    for field, kept in ((g.node, nodes), (g.output, outputs), (g.value_info, infos)):
        del field[:]
        field.extend(kept)
    return bare


#: weight types ONNX Runtime can pair with uint8 activations: U8S8 and U8U8 kernels
WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


@dataclass(frozen=True)
class Int8Settings:
    """How the weights are quantised: their type (``int8``: ONNX Runtime's U8S8 kernels; ``uint8``:
    U8U8) and whether their range is reduced to 7 bits (``reduce_range``: int8 weights in
    [-64, 64], so that the sum of two uint8 x int8 products fits the int16 of AVX2's kernels).

    The default, int8 with reduce_range, gives the same logits on AVX-512 VNNI and on AVX2-only
    CPUs at VNNI's int8 speed; full-range int8 saturates on AVX2, and uint8 weights (exact on
    both) take U8U8 kernels that lose most of int8's speed on a VNNI CPU (38 ms a CamVid tile
    against 16, float32 45). Figures: weights/README.md, "int8 on CPUs without VNNI".
    """

    weights: str = "int8"
    reduce_range: bool = True

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_TYPES:
            raise QuantizeError(f"weights {self.weights!r}: one of {', '.join(WEIGHT_TYPES)}")

    def describe(self) -> str:
        bits = "7-bit range (reduce_range)" if self.reduce_range else "full 8-bit range"
        return f"{self.weights}, {bits}, per channel"


DEFAULT_SETTINGS = Int8Settings()


def quantized_meta(meta: ArtifactMeta, images: Sequence[Path], float_sha256: str,
                   settings: Int8Settings = DEFAULT_SETTINGS) -> ArtifactMeta:
    """``meta`` of the float artifact, marked as quantised from it."""
    source = {**meta.source, "quantization": {
        "method": "onnxruntime static QDQ", "weights": settings.describe(),
        "weight_type": settings.weights, "reduce_range": settings.reduce_range,
        "activations": "uint8, per tensor",
        "calibration": "MinMax", "calibration_images": len(images), "float_artifact_sha256": float_sha256}}
    raw = {**meta.to_json(), "source": source, "metrics": {}}  # float metrics do not carry over
    raw["name"] = f"{meta.name}-int8"
    return parse_meta(json.dumps(raw))


def quantize_artifact(src: Path, dst: Path, images: Sequence[Path], *, tick: Progress | None = None,
                      settings: Int8Settings = DEFAULT_SETTINGS) -> QuantizeReport:
    """Write the int8 version of the artifact ``src`` to ``dst``, calibrated on ``images``."""
    t0 = time.perf_counter()
    meta = read_meta(src)
    if meta.source.get("quantization"):
        raise QuantizeError(f"{src} is already quantised")
    if not images:
        raise QuantizeError("no calibration images")
    tiles = [calibration_tile(p, meta.tile) for p in images]
    float_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory(prefix="pspnet-quant-") as tmp:
        bare, pre, out = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(without_labels(onnx.load(str(src))), str(bare))
        # skip_symbolic_shape: every shape but the batch is fixed, plain ONNX inference suffices
        quant_pre_process(str(bare), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Tiles(tiles, tick), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=settings.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=WEIGHT_TYPES[settings.weights],
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(out))
    del proto.metadata_props[:]  # the tools' own bookkeeping keys; ours is set anew
    qmeta = quantized_meta(meta, images, float_sha, settings)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(qmeta.to_json()))
    add_labels_output(proto.graph, meta.num_classes)  # on the dequantised logits: a float ArgMax
    onnx.checker.check_model(proto, full_check=True)
    blob = proto.SerializeToString()
    agreement = float(np.mean(_checked_labels(blob, tiles) == _labels(src, tiles)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    partial.write_bytes(blob)
    partial.replace(dst)  # never a half-written artifact under the final name
    return QuantizeReport(dst, len(images), agreement, time.perf_counter() - t0, len(blob),
                          hashlib.sha256(blob).hexdigest())
