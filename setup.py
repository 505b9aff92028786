"""Packages of the distribution; everything else is in pyproject.toml.

The shipped artifacts (weights/*.onnx, not the .pt checkpoint) are the package
data of ``pspnet_weights``, a package whose folder is ``weights/``, so a plain
``pip install .`` serves the default model from any folder
(service.settings.shipped_model). Each package is included when its folder is
there: the images build from a context without model/, benchmarks/load/ and weights/
(they copy the artifacts to /app/weights themselves).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
packages = find_packages(include=["model", "model.*", "service", "service.*", "benchmarks", "benchmarks.load"])
package_dir = {}
if any((HERE / "weights").glob("*.onnx")):
    packages.append("pspnet_weights")
    package_dir["pspnet_weights"] = "weights"

setup(packages=packages, package_dir=package_dir)
