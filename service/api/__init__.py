"""The HTTP app: wiring, /v1, /v2 (the Open Inference Protocol), health, admin, the web page,
problem+json errors, middleware, OpenAPI, and the one inference step /v1 and /v2 share.

May import: service.errors, service.settings, service.contract, service.codec, service.engine,
service.pipeline, service.repository, service.telemetry. Never service.offline, service.cli.
"""
