"""Every benchmark and load generator of the project, behind one entry point, results beside it
(benchmarks/results/):

    python -m benchmarks COMMAND [ARGS]   (python -m benchmarks lists them)
    bash benchmarks/gpu_check.sh           the GPU check, one command

Not part of the service: the images leave it out; ``pspnet-serve bench`` runs
benchmarks.load where it is installed (the ``bench`` extra). May import service.*;
nothing in service/ imports it (but the lazy import of ``pspnet-serve bench``).
"""
