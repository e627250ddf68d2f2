# The las-asr gRPC speech service.
#   docker build -t las-asr .                                   (CPU torch wheels, ~1 GB)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t las-asr:gpu .
#   docker build --build-arg BASE_IMAGE=registry.example/python:3.11-slim ...   (a mirror; any Debian-based
#                                                                                image with python3.11 + pip)
# Models are not baked in: mount a folder of checkpoints at /models (ASR_MODELS_DIR) and pick one with ASR_MODEL.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ASR_MODELS_DIR=/models ASR_MODEL=default ASR_PORT=50051 ASR_METRICS_PORT=9090 ASR_LOG_FORMAT=json

RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY asr ./asr
COPY asr_grpc ./asr_grpc
COPY server ./server
COPY client ./client
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && useradd --system --uid 10001 asr
USER asr

EXPOSE 50051 9090
# The gRPC health service; the probe needs no token even when ASR_TOKEN is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "server.probe", "--address", "127.0.0.1:50051"]
# SIGTERM -> graceful shutdown (ASR_GRACE_S, default 10 s); compose's stop_grace_period must be longer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["asr", "serve"]
