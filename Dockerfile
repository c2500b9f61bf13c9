# One image definition, two targets:
#   service (default): the stream worker and tools — no torch.
#   train: the service image plus the pinned CPU torch, for the training job.
FROM python:3.11-slim AS service
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY models ./models
COPY stream ./stream
COPY training ./training
COPY benchmarks ./benchmarks
COPY sessionrec ./sessionrec
# Runs as an unprivileged user; /models belongs to it, so a fresh volume mounted there does too.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sessionrec \
    && mkdir -p /models && chown 10001 /models
USER 10001
EXPOSE 9100
CMD ["sessionrec", "worker"]

FROM service AS train
# Pinned like the Makefile. Pass --build-arg PIP_INDEX_URL=<a CPU wheel index> to avoid the
# CUDA packages that PyPI's Linux build of torch pulls in.
ARG PIP_INDEX_URL
USER root
RUN pip install --no-cache-dir torch==2.13.0
USER 10001
CMD ["sessionrec", "train", "--format", "topic", "--every", "24h"]
