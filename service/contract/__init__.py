"""The seam between model/ and service/: the self-describing ONNX artifact (metadata, outputs,
label dtype), read straight from the wire format; dataset folder pairs; segmentation scores;
the distribution's version.

The one package of service/ that model/ imports. May import: the standard library, numpy, and
onnxruntime in version.py (its version only, never a session). Nothing else of service/.
"""
