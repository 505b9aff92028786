"""The Open Inference Protocol (KServe v2) as Triton serves it: routes, tensor codec, metadata.

May import: service.api.inference, service.api.auth, service.api.uploads, service.api.openapi,
service.errors, service.contract, service.codec, service.pipeline, service.repository.
Never service.engine: a request reaches the engine through service.api.inference.
"""
