"""Bytes <-> arrays: what an upload is (sniff), its RGB frame (decode), the result formats
(encode, and the table of output formats).

May import: service.errors, service.contract, numpy, Pillow, cv2, simplejpeg.
"""
