"""ONNX Runtime sessions of one artifact (providers, IO binding, warm-up) and the cross-request
batcher that feeds them, with its admission policy in a module of its own.

May import: service.errors, service.contract, numpy, onnxruntime.
"""
