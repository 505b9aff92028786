"""ONNX Runtime sessions of one artifact (providers, IO binding, warm-up) and the cross-request
batcher that feeds them, with its admission policy in a module of its own; the stitch on the
engine's device (the protocol's windows, run as small ONNX graphs where the batches ran).

May import: service.errors, service.contract, service.protocol, numpy, onnxruntime.
"""
