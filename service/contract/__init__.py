"""The seam between model/ and service/: the self-describing ONNX artifact (metadata, outputs,
label dtype), read straight from the wire format; dataset folder pairs; segmentation scores;
the distribution's version.

The one package of service/ that model/ imports. May import: the standard library, numpy.
Nothing else of service/.
"""
