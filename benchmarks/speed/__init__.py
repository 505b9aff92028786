"""Throughput and latency: the issue #6 suite and its parts, baselines, codecs, layouts.
"""
