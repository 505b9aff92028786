"""The commands without HTTP: ``segment`` (local and on Ray: inputs, the pool of tiles,
manifest) and ``evaluate``.

May import: service.errors, service.settings, service.contract, service.codec,
service.engine, service.pipeline. Never service.api, service.repository, service.cli;
ray only in on_ray.py.
"""
