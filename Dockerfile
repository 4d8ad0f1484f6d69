# syntax=docker/dockerfile:1
#
# The Visgate inference worker image for Runpod serverless.
#
# Base: the official PyTorch CUDA *runtime* image, pinned: torch 2.9.1 built for CUDA 12.8 (Hopper
# and Blackwell kernels, the mega-cache API runtime/compile_cache.py uses), cuDNN 9, conda
# Python 3.11 (fpng, the fast PNG encoder, ships a cp311 wheel). From 2.11 on the official images
# switch to Ubuntu 24.04's system Python 3.12 (PEP 668): moving the base means revisiting the pip
# steps below and XFORMERS_VERSION.
#
# Build (or use ./build-and-push.sh):
#   docker build -t visgateai/inference:latest .
#   docker build --build-arg INSTALL_XFORMERS=1 -t visgateai/inference:xformers .
#   HF_TOKEN=... docker build --build-arg BAKE_MODEL=black-forest-labs/FLUX.1-schnell \
#       --secret id=hf_token,env=HF_TOKEN -t visgateai/inference:flux-schnell .
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A C/C++ toolchain: Triton builds its kernel launcher with `cc` and inductor compiles host-side
# code, so torch.compile (VISGATE_COMPILE=regional, the CUDA default) fails without one. The
# runtime image has none. Versions follow the base image's Ubuntu release, hence no pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Python dependencies, pinned in requirements.txt (which lists no torch). The constraint file pins
# the base image's own torch, triton and CUDA libraries, so a dependency that wanted another torch
# fails the build here instead of silently downloading several GB over the tested build.
COPY requirements.txt /tmp/requirements.txt
RUN python -m pip list --format=freeze \
        | grep -iE '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)==' > /etc/pip-constraints.txt \
    && grep -q '^torch==' /etc/pip-constraints.txt \
    && python -m pip install --no-cache-dir -c /etc/pip-constraints.txt -r /tmp/requirements.txt \
    && python -c "import torch, diffusers, transformers, runpod; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" \
    && rm /tmp/requirements.txt

# Optional xformers attention (VISGATE_ATTENTION=xformers). Each xformers release is built against
# exactly one torch: 0.0.33.post2 requires torch==2.9.1, the base image's. The constraint file makes
# a mismatched XFORMERS_VERSION fail the build rather than replace torch.
ARG INSTALL_XFORMERS=0
ARG XFORMERS_VERSION=0.0.33.post2
RUN if [ "${INSTALL_XFORMERS}" = "1" ]; then \
        python -m pip install --no-cache-dir -c /etc/pip-constraints.txt "xformers==${XFORMERS_VERSION}" \
        && python -c "import xformers.ops; print('xformers', xformers.__version__)"; \
    fi

# torchao for VISGATE_QUANTIZE (fp8 on Hopper/Ada, int8 weight-only): 0.15.0 is the release built
# against torch 2.9.1 (torchao's own compatibility table). Optional for the worker, which skips
# quantization with a reason where it is missing; here it is part of the product.
ARG TORCHAO_VERSION=0.15.0
RUN python -m pip install --no-cache-dir -c /etc/pip-constraints.txt "torchao==${TORCHAO_VERSION}" \
    && python -c "import torchao; print('torchao', torchao.__version__)"

# The worker. .dockerignore admits only what the image needs (no tests, results, caches or .env).
COPY runtime/ /app/runtime/
COPY pipelines/ /app/pipelines/
# Used only outside Runpod: `docker run` without Runpod's job queue runs this one job and exits.
COPY test_input.json /app/test_input.json
RUN python -m compileall -q /app/runtime /app/pipelines

# Optional: bake a model's weights into the image (the fastest boot after Runpod's cached models).
# The fetch stage itself downloads them (same file selection and checks as a worker boot); the
# token comes from a BuildKit secret, never an ARG or ENV, so it is in no layer or history:
#   --build-arg BAKE_MODEL=<hub id> --secret id=hf_token,env=HF_TOKEN   (or ,src=<file>)
# Baked files live outside /runpod-volume, which the volume mount would hide, and HF_MODEL_ID
# names them as a local directory: the worker then boots with no hub traffic. HF_HOME points at a
# temporary directory during the download so no hub cache is left in the layer.
ARG BAKE_MODEL=""
ARG BAKE_REVISION=main
RUN --mount=type=secret,id=hf_token \
    if [ -n "${BAKE_MODEL}" ]; then \
        HF_HOME=/tmp/bake-hf-home python -m runtime.prefetch \
            --model "${BAKE_MODEL}" --revision "${BAKE_REVISION}" \
            --cache-dir /opt/visgate/baked --link "/opt/visgate/models/${BAKE_MODEL}" \
            --token-file /run/secrets/hf_token \
        && rm -rf /tmp/bake-hf-home; \
    fi

# Empty (unset, for the worker) unless a model was baked; an endpoint's own HF_MODEL_ID wins.
ENV HF_MODEL_ID=${BAKE_MODEL:+/opt/visgate/models/${BAKE_MODEL}}

# PYTHONUNBUFFERED: log lines reach Runpod's console as they happen.
# RUNPOD_DEBUG_LEVEL: the SDK's default (DEBUG) logs every job's input and output (prompts,
#   megabytes of base64); runtime/__main__.py defaults it too.
# HF_HOME: the Hugging Face home the worker's own cache agrees with. With the Runpod volume
#   mounted, VISGATE_CACHE_DIR defaults to /runpod-volume/visgate and the fetch stage keeps its hub
#   cache in <VISGATE_CACHE_DIR>/hf/hub, i.e. $HF_HOME/hub: anything the libraries fetch on their
#   own lands in the same cache. Compiled artifacts go to <VISGATE_CACHE_DIR>/compile (the worker
#   sets TORCHINDUCTOR_CACHE_DIR itself).
ENV PYTHONUNBUFFERED=1 \
    RUNPOD_DEBUG_LEVEL=INFO \
    HF_HOME=/runpod-volume/visgate/hf

CMD ["python", "-m", "runtime"]
