"""Several server processes on one port: the supervisor of ``pspnet-serve --workers N`` and how many
workers ``auto`` means.

May import: service.settings, service.engine, service.repository, service.telemetry. Imported only
by service.cli; never service.api (each worker builds its own app in its own process).
"""
