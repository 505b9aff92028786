"""Training, conversion, export and int8 quantisation of PSPNet (PyTorch) into the self-describing
ONNX artifact that service/ serves; ``pspnet-model`` (cli.py).

May import: service.contract (the artifact's contract, folder pairs, scores, version), torch,
onnx, onnxruntime, numpy, OpenCV, Pillow, tqdm. Nothing else of service/; service/ never imports
model/ (it runs without torch).
"""
