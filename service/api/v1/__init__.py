"""Our own API: /v1/models, /v1/segment, /v1/models/{name}/segment, and its strict query.

May import: service.api (inference, auth, uploads, openapi), and below.
"""
