# flaxbert's model server as a SageMaker "bring your own container" image (CPU).
#
#   docker build -t flaxbert-serve .
#   docker run -p 8080:8080 -v $PWD/model:/opt/ml/model flaxbert-serve serve
#
# SageMaker runs `docker run IMAGE serve` with the model unpacked at /opt/ml/model and sends
# GET /ping and POST /invocations to port 8080; the `serve` console script
# (flaxbert/serve/container.py) drops that `serve` argument and runs `flaxbert serve` there.
# Settings come from FLAXBERT_* variables (docs/serving.md), e.g. -e FLAXBERT_MAX_BATCH_SIZE=16.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/flaxbert
# The package alone (no tests, benchmarks or runs: see .dockerignore).
COPY pyproject.toml setup.cfg README.md ./
COPY flaxbert ./flaxbert
COPY pretrain ./pretrain
COPY finetune ./finetune
RUN pip install ".[serve]"

# A user of its own: the server needs no root, and the model mount is only read.
RUN useradd --create-home --uid 1000 flaxbert && mkdir -p /opt/ml/model
USER flaxbert
# JAX's persistent compilation cache: a restarted container compiles its shapes again from it
# in seconds (the first start compiles them all before /ping turns 200).
# (The model's default place, /opt/ml/model, is the script's own: SM_MODEL_DIR still overrides.)
ENV FLAXBERT_CACHE_DIR=/home/flaxbert/.cache/flaxbert

EXPOSE 8080
# Exec form: the server is PID 1 and gets docker's (and SageMaker's) SIGTERM itself.
# `docker run IMAGE serve` runs `serve serve`; the script drops the repeated word.
ENTRYPOINT ["serve"]
