"""The Open Inference Protocol (KServe v2) as Triton serves it: routes, tensor codec, metadata.

May import: service.api (inference, auth, uploads, openapi), and below.
"""
