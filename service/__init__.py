"""The server and the offline commands of the PSPNet artifact (docs/DESIGN.md, "Layout").

    contract/    the seam with model/: the artifact, folders, scores, version
    protocol/    the paper's test procedure: windows, tiles, stitching (numpy)
    codec/       bytes <-> arrays: sniff, decode, encode, output formats
    engine/      ONNX Runtime sessions, the cross-request batcher, admission
    pipeline/    the one road: decode -> plan -> run tiles -> crop or stitch -> encode
    repository/  the models served: directory, runtimes, reload, state
    telemetry/   metrics, logs, traces
    api/         HTTP: /v1, /v2, health, admin, web, errors, OpenAPI
    workers/     pspnet-serve --workers N: the supervisor of several server processes
    offline/     segment (local, Ray) and evaluate
    errors.py    domain errors and their RFC 9457 problem bodies
    settings.py  the PSPNET_* settings
    describe.py  ``pspnet-serve describe``: draft the description file of any segmentation ONNX
    cli.py       ``pspnet-serve``: serve, segment, evaluate, describe, bench, --version

May import: in errors.py and settings.py, nothing of the repo (every package may import them);
in describe.py, contract (and onnxruntime); in cli.py, the entry point, the packages it runs
(contract, settings, telemetry at the top; repository, api, workers, offline, describe and
benchmarks.load inside their commands). Each package's __init__ says what it may import;
tests/test_structure.py holds every import to it.
"""
