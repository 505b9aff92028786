"""Our own API: /v1/models, /v1/segment, /v1/models/{name}/segment, and its strict query.

May import: service.api.inference, service.api.auth, service.api.uploads, service.api.openapi,
service.errors, service.contract, service.codec, service.pipeline, service.repository.
Never service.engine: a request reaches the engine through service.api.inference.
"""
