"""Prometheus metrics, log lines, request traces (OpenTelemetry only with the otel extra).

May import: nothing of service/; prometheus_client, the standard library; opentelemetry
only in otel.py; uvicorn's logging configuration in logs.py.
"""
