"""The one definition of the in-graph ``labels`` output (contract: service/contract/artifact.py).

Every writer appends it with :func:`add_labels_output`: the exporter, the
converters, the quantiser and the tests' hand-built graphs; the service checks
the same two nodes when it loads a file (``service.contract.artifact``).

Tested by tests/service/contract/test_artifact.py (the service's check of the two nodes) and
tests/model/test_export.py.
"""

from __future__ import annotations

import onnx
from onnx import helper

from service.contract.artifact import LABELS_NAME, ONNX_LABEL_TYPES, OUTPUT_NAME, ArtifactError, label_dtype


def add_labels_output(graph: onnx.GraphProto, num_classes: int) -> None:
    """Append ``labels = Cast(ArgMax(logits, axis=1, keepdims=0, select_last_index=0))``
    and declare it ``[batch, H, W]`` with the batch and tile of the ``logits`` output."""
    logits = next((o for o in graph.output if o.name == OUTPUT_NAME), None)
    if logits is None or any(o.name == LABELS_NAME for o in graph.output):
        raise ArtifactError(f"need a {OUTPUT_NAME!r} output and no {LABELS_NAME!r} output yet")
    dims = logits.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ArtifactError(f"{OUTPUT_NAME!r} must be declared [N, C, H, W]")
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in dims]
    elem_type = ONNX_LABEL_TYPES[label_dtype(num_classes)]
    argmax = f"{LABELS_NAME}_int64"
    graph.node.extend([
        helper.make_node("ArgMax", [OUTPUT_NAME], [argmax], name=f"{LABELS_NAME}/ArgMax", axis=1,
                         keepdims=0, select_last_index=0),
        helper.make_node("Cast", [argmax], [LABELS_NAME], name=f"{LABELS_NAME}/Cast", to=elem_type),
    ])
    graph.output.append(helper.make_tensor_value_info(LABELS_NAME, elem_type, [shape[0], shape[2], shape[3]]))
