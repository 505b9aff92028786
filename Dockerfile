# PSPNet serving image for NVIDIA GPUs: ONNX Runtime's CUDA provider, no torch.
# Build from the repository root (BuildKit: Docker 23+, or DOCKER_BUILDKIT=1 on 20.10):
#
#   docker build -t pspnet-serving:cuda .
#   docker run --rm --gpus all -p 8000:8000 --stop-timeout 75 pspnet-serving:cuda
#
# No vendor base: the same Python base as the CPU image (docker/Dockerfile.cpu), and the
# CUDA libraries from pip wheels, pinned and hashed in docker/requirements-gpu.txt with the
# rest (docker/lock.sh, docker/gpu-libs.in). The pinned onnxruntime-gpu is built for CUDA 13.0
# (its build_and_package_info says cuda_version '13.0'); its CUDA provider links
# libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libcuda.so.1,
# and opens cuDNN 9 at run time. The wheels bring all of them but libcuda.so.1, the
# driver's, which the NVIDIA Container Toolkit mounts (`--gpus`): the host needs a driver
# for CUDA 13 (R580 or newer). The loader finds the wheels' libraries through
# /etc/ld.so.conf.d (below), for the server and for any other process in the image.
#
# The install step is docker/install.sh, the same script CI runs in a fresh venv.
# Settings come from the environment (PSPNET_*, see docs/DEPLOYMENT.md). No `# syntax=`
# line: nothing is fetched from an image registry but the base, which PYTHON_IMAGE swaps (a
# mirror, a digest, or docker/base.sh's image where no registry is reachable).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Debian drops superseded point releases from its archive, so exact apt pins
# would break the build; the base tag pins what matters.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
WORKDIR /src
# Dependencies first: their layer (most of the image: the CUDA and cuDNN wheels) survives
# edits of the service's code.
COPY docker/install.sh docker/requirements-gpu.txt /src/docker/
RUN PIP_NO_CACHE_DIR=1 PYTHON=python3 sh /src/docker/install.sh gpu /opt/venv --deps-only
COPY pyproject.toml setup.py README.md /src/
COPY service/ /src/service/
RUN PIP_NO_CACHE_DIR=1 PYTHON=python3 sh /src/docker/install.sh gpu /opt/venv

FROM base AS runtime
RUN groupadd --system --gid 10001 pspnet \
    && useradd --system --uid 10001 --gid pspnet --home-dir /app --no-create-home pspnet
COPY --from=builder /opt/venv /opt/venv
# The wheels' CUDA (nvidia/cu13) and cuDNN (nvidia/cudnn) libraries in the loader's cache.
RUN for d in /opt/venv/lib/python3*/site-packages/nvidia/cu13/lib \
             /opt/venv/lib/python3*/site-packages/nvidia/cudnn/lib; do \
        test -d "$d" && echo "$d" || exit 1; \
    done > /etc/ld.so.conf.d/pspnet-nvidia-wheels.conf \
    && ldconfig
COPY docker/healthcheck.py /app/healthcheck.py
COPY weights/pspnet_camvid.onnx /app/weights/pspnet_camvid.onnx
# The settings module's default model path points into the source tree, which a
# wheel install does not have: the image names its baked-in model explicitly.
# HOME: somewhere the user may write (ONNX Runtime keeps a telemetry id there); /tmp is
# also what a read-only root needs mounted writable (--tmpfs /tmp, an emptyDir).
ENV PATH="/opt/venv/bin:${PATH}" \
    HOME=/tmp \
    PSPNET_MODEL=/app/weights/pspnet_camvid.onnx \
    PSPNET_HOST=0.0.0.0 \
    PSPNET_PORT=8000 \
    PSPNET_PROVIDER=auto \
    CUDA_CACHE_PATH=/tmp/cuda-cache
WORKDIR /app
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001
EXPOSE 8000
# liveness only: /readyz stays 503 during warm-up, which is not a failure
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# tini as PID 1 forwards SIGTERM to the server (graceful drain, then exit 143: uvicorn
# re-raises the signal) and reaps children; python as PID 1 would ignore SIGTERM until
# uvicorn is up. Give `docker stop` the drain window: --stop-timeout 75.
ENTRYPOINT ["tini", "--", "pspnet-serve"]
CMD []
# last, so that a new revision rebuilds no layer
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="pspnet-serving" \
      org.opencontainers.image.description="PSPNet semantic segmentation on ONNX Runtime (CUDA)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
