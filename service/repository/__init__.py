"""The models served: the model directory, one runtime per model (engine, batcher, health,
statistics), loading and reloading, and what lives between requests.

May import: service.errors, service.settings, service.contract, service.codec,
service.engine, service.telemetry. Never service.pipeline (the chain is built per call by
service.api), never service.api.
"""
