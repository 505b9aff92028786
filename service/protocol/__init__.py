"""The paper's test procedure (hszhao/semseg tool/test.py) as pure functions: window geometry,
tiles of an image, and tile logits back to the image's labels (banded, exact), with the
bilinear resize and argmax it needs and the stitcher's memory bound.

May import: service.contract, numpy, cv2. No I/O, no threads, no requests.
"""
