"""Load generation and measurement for ``pspnet-serve bench`` and the benchmark scripts.

Not part of the service: the images do not carry it, and it needs the ``bench``
extra (httpx). ``pspnet-serve bench`` imports it only when asked to run.
"""
