"""Optional OpenTelemetry tracing: one span per HTTP request, a child span per pipeline stage.

Tracing is on when all of these hold (read once, when the app is built):

* the ``otel`` extra is installed (``opentelemetry-sdk`` and
  ``opentelemetry-exporter-otlp-proto-http``);
* ``OTEL_SDK_DISABLED`` is not ``true``;
* an exporter is asked for: ``OTEL_TRACES_EXPORTER`` names ``otlp`` (OTLP over
  HTTP/protobuf) and/or ``console`` (stdout, for trying it out), or, with
  ``OTEL_TRACES_EXPORTER`` unset, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set. ``OTEL_TRACES_EXPORTER=none`` is off.

The rest is the SDK's own reading of the standard variables: endpoint, headers,
timeout, sampler (default: parent-based, always on), batch processor,
``OTEL_SERVICE_NAME`` (default here ``pspnet-serving``), resource attributes,
propagators (default W3C ``traceparent``). Requiring an explicit exporter keeps
an install that merely has the packages from sending spans to a default
localhost collector nobody runs.

Otherwise the app holds :data:`NO_TRACING`, whose calls do nothing, and the
opentelemetry packages are never imported: without the extra nothing changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from service.telemetry.spans import NO_TRACING, Tracing

log = logging.getLogger("pspnet.tracing")

EXPORTERS = ("otlp", "console")
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def exporters_from(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for, by the rule above; empty when tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        return ["otlp"] if any(environ.get(v, "").strip() for v in ENDPOINT_VARS) else []
    wanted = [name.strip() for name in named.split(",") if name.strip()]
    if "none" in wanted:
        return []
    unknown = [name for name in wanted if name not in EXPORTERS]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: %s not available here (only %s); ignored",
                    ", ".join(unknown), ", ".join(EXPORTERS))
    return [name for name in EXPORTERS if name in wanted]


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing:
    """Tracing as the ``OTEL_*`` variables ask, or :data:`NO_TRACING`."""
    environ = os.environ if environ is None else environ
    exporters = exporters_from(environ)
    if not exporters:
        return NO_TRACING
    try:
        from service.telemetry.otel import OtelTracing, exporter
    except ImportError as e:
        # asked for, but the extra is missing: say so once, then serve exactly as without it
        log.warning("tracing is configured (OTEL_*) but the otel extra is not installed (%s); "
                    "tracing is off: pip install 'pspnet-serving[otel]'", e)
        return NO_TRACING
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in exporters and protocol not in (None, "", "http/protobuf"):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is installed; using it", protocol)
    tracing = OtelTracing([exporter(name) for name in exporters])
    log.info("tracing on: %s exporter(s)", ", ".join(exporters))
    return tracing
