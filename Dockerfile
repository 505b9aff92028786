# syntax=docker/dockerfile:1
#
# PSPNet serving image for NVIDIA GPUs: ONNX Runtime's CUDA provider, no torch.
#
#   docker build -t pspnet-serving:cuda .
#   docker run --gpus all -p 8000:8000 pspnet-serving:cuda
#
# Base: the pinned onnxruntime-gpu (docker/requirements-gpu.txt) is built for
# CUDA 13.0 and loads cuDNN 9 at run time (its wheel's build_and_package_info says
# cuda_version '13.0'; its libonnxruntime_providers_cuda.so needs libcudart.so.13,
# libcublas.so.13, libcurand.so.10; its `cudnn` extra names nvidia-cudnn-cu13~=9.0).
# The CUDA *runtime* image with cuDNN has all of them; the host needs an NVIDIA
# driver recent enough for CUDA 13 (R580 or newer) and the NVIDIA Container Toolkit.
# Ubuntu 24.04's python3 is 3.12; the pins are resolved for it (docker/lock.sh).
#
# The install step is docker/install.sh, the same script CI runs in a fresh venv.
# Settings come from the environment (PSPNET_*, see docs/DEPLOYMENT.md).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Ubuntu drops superseded package versions from its archive, so exact apt pins
# would break the build within weeks; the CUDA base tag pins what matters.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
WORKDIR /src
# Dependencies first: their layer survives edits of the service's code.
COPY docker/install.sh docker/requirements-gpu.txt /src/docker/
RUN PIP_NO_CACHE_DIR=1 sh /src/docker/install.sh gpu /opt/venv --deps-only
COPY pyproject.toml setup.py README.md /src/
COPY service/ /src/service/
RUN PIP_NO_CACHE_DIR=1 sh /src/docker/install.sh gpu /opt/venv

FROM base AS runtime
LABEL org.opencontainers.image.title="pspnet-serving" \
      org.opencontainers.image.description="PSPNet semantic segmentation on ONNX Runtime (CUDA)" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 pspnet \
    && useradd --system --uid 10001 --gid pspnet --home-dir /app --no-create-home pspnet
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /app/healthcheck.py
COPY weights/pspnet_camvid.onnx /app/weights/pspnet_camvid.onnx
# The settings module's default model path points into the source tree, which a
# wheel install does not have: the image names its baked-in model explicitly.
ENV PATH="/opt/venv/bin:${PATH}" \
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
# tini as PID 1 forwards SIGTERM to the server (graceful drain) and reaps
# children; python as PID 1 would ignore SIGTERM until uvicorn is up.
ENTRYPOINT ["tini", "--", "pspnet-serve"]
CMD []
