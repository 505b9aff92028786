"""What the Open Inference Protocol says about a model: metadata, Triton-style config, statistics,
and its entry in the repository index (Triton's model repository extension).

Every artifact is served the same way: two inputs of which a request sends one
(``image``: encoded files, BYTES [N]; ``pixels``: RGB UINT8 [N, H, W, 3], or
[H, W, 3] unbatched) and two outputs: ``labels`` of the input's size (UINT8, UINT16
beyond 256 classes), and ``probabilities`` (FP16 [N, C, H, W], sent only when asked
for). Each model is version "1". Statistics follow Triton's
``/v2/models/{name}/stats`` shape: cumulative counts and nanoseconds.

Tested by tests/service/api/v2/test_routes.py (metadata, config, statistics, the repository index).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.api.v2.codec import datatype_of
from service.contract.artifact import ArtifactMeta, label_dtype
from service.errors import BadRequest

MODEL_VERSION = "1"
#: a model's state in the repository index, as Triton names them
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
PLATFORM = "pspnet_onnx"
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "FP16": "TYPE_FP16"}


def labels_datatype(meta: ArtifactMeta) -> str:
    """UINT8, or UINT16 beyond 256 classes: the one label rule (service.contract.artifact.label_dtype)."""
    return datatype_of(np.dtype(label_dtype(meta.num_classes)))


def _tensors(meta: ArtifactMeta) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1]},
              {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    outputs = [{"name": "labels", "datatype": labels_datatype(meta), "shape": [-1, -1, -1]},
               {"name": "probabilities", "datatype": "FP16", "shape": [-1, meta.num_classes, -1, -1]}]
    return inputs, outputs


def metadata(meta: ArtifactMeta) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    inputs, outputs = _tensors(meta)
    return {"name": meta.name, "versions": [MODEL_VERSION], "platform": PLATFORM, "inputs": inputs,
            "outputs": outputs}


def config(meta: ArtifactMeta, *, max_batch_tiles: int, max_wait_ms: float) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``, in Triton's JSON form of a model config.

    ``max_batch_size`` is 0: shapes are whole (a request's N images are its first dim), because
    what the server batches is tiles, across requests, up to ``max_batch_tiles`` per run; the
    ``parameters`` say so, with the classes and the protocol defaults.
    """
    inputs, outputs = _tensors(meta)

    def triton(t: dict[str, Any]) -> dict[str, Any]:
        return {"name": t["name"], "data_type": _TRITON_TYPES[t["datatype"]], "dims": t["shape"]}

    p = meta.protocol
    parameters = {
        "classes": ",".join(meta.classes), "tile": f"{meta.tile[0]}x{meta.tile[1]}",
        "mode": p.mode, "base_size": str(p.base_size), "scales": ",".join(f"{s:g}" for s in p.scales),
        "flip": str(p.flip).lower(), "tile_batching": f"up to {max_batch_tiles} tiles of all requests, "
        f"waiting at most {max_wait_ms:g} ms",
    }
    return {"name": meta.name, "platform": PLATFORM, "backend": "onnxruntime", "max_batch_size": 0,
            "input": [triton(t) for t in inputs], "output": [triton(t) for t in outputs],
            "parameters": {k: {"string_value": v} for k, v in parameters.items()}}


def index_entry(name: str, state: str, reason: str | None = None, *,
                version: str | None = MODEL_VERSION) -> dict[str, str]:
    """One entry of ``POST /v2/repository/index``: ``name``, ``version`` (left out for a file that
    never loaded), ``state`` and, when there is one, the ``reason`` for it (as Triton: no empty
    reason)."""
    entry = {"name": name}
    if version is not None:
        entry["version"] = version
    entry["state"] = state
    if reason:
        entry["reason"] = reason
    return entry


def parse_index_request(body: bytes) -> bool:
    """``ready`` of an index request body: empty (what tritonclient sends), or a JSON object with
    at most ``ready`` (a boolean: only the models ready for inference). Anything else is a 400."""
    if not body.strip():
        return False
    try:
        doc = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError is one
        raise BadRequest(f"the index request is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest('the index request must be a JSON object, e.g. {"ready": true}')
    unknown = sorted(set(doc) - {"ready"})
    if unknown:
        raise BadRequest(f"unknown members {unknown} of the index request; allowed: ['ready']")
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    return ready
