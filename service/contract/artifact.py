"""The ONNX artifact contract (docs/DESIGN.md "The seam").

``model/`` writes one ``.onnx`` file whose ``metadata_props["pspnet"]`` is the
JSON described by :class:`ArtifactMeta`; this module validates it and is the
only place the service learns classes, palette, tile, normalisation and
protocol defaults from. Nothing here imports ONNX Runtime or torch.

Outputs: ``logits`` float32 ``[N, C, H, W]`` always; ``labels`` ``[N, H, W]``
optionally (artifacts exported before it have only ``logits``). ``labels`` is
``ArgMax(logits, axis=1, keepdims=0, select_last_index=0)`` cast in the graph to
uint8 when C <= 256, else uint16: the first class wins a tie, as in
:func:`service.protocol.argmax.argmax_classes`. :func:`read_outputs` says which form a
file is; :func:`model.labels_output.add_labels_output` is the one definition of
those two nodes, used by every writer (exporter, quantiser, the tests' hand-built
graphs). The file is read by :mod:`service.contract.onnx_wire`, so serving needs no
``onnx`` package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.contract.onnx_wire import (
    ELEM_TYPE_NAMES,
    UINT8,
    UINT16,
    ModelView,
    ValueInfo,
    WireError,
    read_model,
)

METADATA_KEY = "pspnet"
INPUT_NAME = "image"
Tiles = npt.NDArray[np.float32]  # what INPUT_NAME takes: (N, 3, H, W) raw 0..255 RGB
OUTPUT_NAME = "logits"
LABELS_NAME = "labels"
Mode = Literal["whole", "slide", "multiscale"]
MODES: tuple[Mode, ...] = ("whole", "slide", "multiscale")
MULTISCALE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class ArtifactError(ValueError):
    """The file is not a usable PSPNet artifact; the message says why."""


@dataclass(frozen=True)
class InferenceProtocol:
    """The inference defaults a request gets when it does not say otherwise (JSON key ``protocol``)."""

    mode: Mode = "slide"
    base_size: int = 512
    scales: tuple[float, ...] = (1.0,)
    stride_rate: float = 2 / 3
    flip: bool = False




@dataclass(frozen=True)
class ArtifactMeta:
    name: str
    dataset: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    tile: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align_corners: bool
    protocol: InferenceProtocol
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "dataset": self.dataset, "classes": list(self.classes),
            "palette": [list(c) for c in self.palette], "tile": list(self.tile),
            "mean": list(self.mean), "std": list(self.std), "align_corners": self.align_corners,
            "protocol": {"mode": self.protocol.mode, "base_size": self.protocol.base_size,
                         "scales": list(self.protocol.scales), "stride_rate": self.protocol.stride_rate,
                         "flip": self.protocol.flip},
            "source": self.source, "metrics": self.metrics, **self.extra,
        }


def _require(d: dict[str, Any], key: str, where: str = "metadata") -> Any:
    if key not in d:
        raise ArtifactError(f"{where} lacks {key!r}")
    return d[key]


def parse_meta(raw: str) -> ArtifactMeta:
    """Validate the ``pspnet`` metadata JSON; every problem is an ArtifactError."""
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"metadata {METADATA_KEY!r} is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ArtifactError("metadata must be a JSON object")
    return meta_from_dict(d)


def meta_from_dict(d: dict[str, Any], where: str = "metadata") -> ArtifactMeta:
    """:func:`parse_meta` of a parsed object; ``where`` names it in the errors (a description file's
    name, service/contract/description.py)."""
    try:
        classes = tuple(str(c) for c in _require(d, "classes", where))
        palette = tuple((int(c[0]), int(c[1]), int(c[2])) for c in _require(d, "palette", where))
        tile_h, tile_w = (int(v) for v in _require(d, "tile", where))
        mean = tuple(float(v) for v in _require(d, "mean", where))
        std = tuple(float(v) for v in _require(d, "std", where))
        p = _require(d, "protocol", where)
        protocol = InferenceProtocol(
            mode=str(_require(p, "mode", "protocol")),  # type: ignore[arg-type]
            base_size=int(_require(p, "base_size", "protocol")),
            scales=tuple(float(s) for s in _require(p, "scales", "protocol")),
            stride_rate=float(_require(p, "stride_rate", "protocol")),
            flip=bool(_require(p, "flip", "protocol")),
        )
    except (TypeError, ValueError, IndexError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"malformed {where}: {e}") from None
    if not classes:
        raise ArtifactError(f"{where} has no classes")
    if len(palette) != len(classes):
        raise ArtifactError(f"{len(classes)} classes but {len(palette)} palette colours")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ArtifactError("mean and std need three values each, std positive")
    if tile_h < 8 or tile_w < 8:
        raise ArtifactError(f"tile {tile_h}x{tile_w} is too small")
    if protocol.mode not in MODES:
        raise ArtifactError(f"protocol mode {protocol.mode!r} is not one of {MODES}")
    if not protocol.scales or any(s <= 0 for s in protocol.scales):
        raise ArtifactError("protocol scales must be positive")
    if not 0 < protocol.stride_rate <= 1:
        raise ArtifactError("protocol stride_rate must be in (0, 1]")
    known = {"name", "dataset", "classes", "palette", "tile", "mean", "std", "align_corners",
             "protocol", "source", "metrics"}
    return ArtifactMeta(
        name=str(d.get("name", "pspnet")), dataset=str(d.get("dataset", "unknown")),
        classes=classes, palette=palette, tile=(tile_h, tile_w),
        mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
        align_corners=bool(d.get("align_corners", False)), protocol=protocol,
        source=dict(d.get("source") or {}), metrics=dict(d.get("metrics") or {}),
        extra={k: v for k, v in d.items() if k not in known},
    )


LabelDtype = type[np.uint8] | type[np.uint16]


def label_dtype(num_classes: int) -> LabelDtype:
    """The one rule for class ids: uint8 up to 256 classes, uint16 beyond.

    The ``labels`` output, the stitcher's label maps and the label PNG all follow it.
    """
    if not 1 <= num_classes <= 65536:
        raise ArtifactError(f"cannot store labels of {num_classes} classes")
    return np.uint8 if num_classes <= 256 else np.uint16


#: the ONNX element type (TensorProto.DataType) of each label dtype
ONNX_LABEL_TYPES: dict[LabelDtype, int] = {np.uint8: UINT8, np.uint16: UINT16}


@dataclass(frozen=True)
class ArtifactOutputs:
    """What the graph returns: ``logits`` always, ``labels`` when :attr:`labels_dtype` is set."""

    labels_dtype: LabelDtype | None = None  # None: an artifact with ``logits`` only

    @property
    def has_labels(self) -> bool:
        return self.labels_dtype is not None

    @property
    def names(self) -> tuple[str, ...]:
        """The contract's outputs this file has, in fetch order."""
        return (OUTPUT_NAME, LABELS_NAME) if self.has_labels else (OUTPUT_NAME,)


def _check_labels(model: ModelView, value: ValueInfo, meta: ArtifactMeta) -> LabelDtype:
    """Declared [N, H, W] of the class count's dtype, and computed as the contract says."""
    dtype = label_dtype(meta.num_classes)
    if value.elem_type != ONNX_LABEL_TYPES[dtype]:
        found = ELEM_TYPE_NAMES.get(value.elem_type or 0, f"type {value.elem_type}")
        raise ArtifactError(f"output {LABELS_NAME!r} is {found}, expected "
                            f"{np.dtype(dtype).name} for {meta.num_classes} classes")
    shape = list(value.shape or ())
    if len(shape) != 3 or tuple(shape[1:]) != meta.tile:
        raise ArtifactError(f"output {LABELS_NAME!r} has shape {shape}, expected [N, {meta.tile[0]}, "
                            f"{meta.tile[1]}]")
    # the server serves these labels in place of its own argmax: the graph must compute exactly that
    producer = {out: node for node in model.nodes for out in node.outputs}
    cast = producer.get(LABELS_NAME)
    argmax = producer.get(cast.inputs[0]) if cast is not None and cast.op_type == "Cast" and cast.inputs \
        else None
    if (argmax is None or argmax.op_type != "ArgMax" or list(argmax.inputs) != [OUTPUT_NAME]
            or argmax.int_attrs.get("axis", 0) not in (1, -3) or argmax.int_attrs.get("keepdims", 1) != 0
            or argmax.int_attrs.get("select_last_index", 0) != 0):
        raise ArtifactError(f"output {LABELS_NAME!r} is not Cast(ArgMax({OUTPUT_NAME}, axis=1, keepdims=0, "
                            "select_last_index=0))")
    return dtype


def _read(path: Path) -> tuple[ArtifactMeta, ArtifactOutputs]:
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    try:
        m = read_model(path)
    except (WireError, OSError) as e:
        raise ArtifactError(f"{path} is not a readable ONNX model: {e}") from None
    if METADATA_KEY not in m.metadata:
        raise ArtifactError(f"{path} has no {METADATA_KEY!r} metadata: export it with pspnet-model, or "
                            f"describe it in {path.with_suffix('.json').name} beside it (pspnet-serve "
                            "describe drafts one)")
    meta = parse_meta(m.metadata[METADATA_KEY])
    inputs = [i for i in m.inputs if i.name not in m.initializers]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ArtifactError(f"expected one input {INPUT_NAME!r}, found {[i.name for i in inputs]}")
    outputs = [o.name for o in m.outputs]
    if OUTPUT_NAME not in outputs:
        raise ArtifactError(f"expected an output {OUTPUT_NAME!r}, found {outputs}")
    shape = list(inputs[0].shape or ())
    if len(shape) != 4 or shape[1] != 3 or tuple(shape[2:]) != meta.tile:
        raise ArtifactError(f"input shape {shape} does not match [N, 3, {meta.tile[0]}, {meta.tile[1]}]")
    labels = next((o for o in m.outputs if o.name == LABELS_NAME), None)
    dtype = None if labels is None else _check_labels(m, labels, meta)
    return meta, ArtifactOutputs(labels_dtype=dtype)


def read_artifact(path: Path) -> tuple[ArtifactMeta, ArtifactOutputs]:
    """:func:`read_meta` and :func:`read_outputs` in one read of the file."""
    return _read(path)


def read_meta(path: Path) -> ArtifactMeta:
    """Read and check an artifact's metadata and its input/output signature (``labels`` included)."""
    return _read(path)[0]


def read_outputs(path: Path) -> ArtifactOutputs:
    """Which outputs the artifact has, after the same checks as :func:`read_meta`."""
    return _read(path)[1]
