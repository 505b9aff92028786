"""Overload and memory runs against a real server (RELIABILITY.md).
"""
