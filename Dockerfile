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
RUN pip install --no-cache-dir .
EXPOSE 9100
CMD ["sessionrec", "worker"]

FROM service AS train
# Pinned like the Makefile. Pass --build-arg PIP_INDEX_URL=<a CPU wheel index> to avoid the
# CUDA packages that PyPI's Linux build of torch pulls in.
ARG PIP_INDEX_URL
RUN pip install --no-cache-dir torch==2.13.0
CMD ["sessionrec", "train", "--format", "topic", "--every", "24h"]
