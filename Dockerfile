# One image definition, two targets, both installed from constraints.txt (the versions CI tests):
#   service (default): the stream worker and tools; no torch, no embedded broker.
#   train: the service image plus the pinned CPU torch (deploy/install-torch.sh, as the
#          Makefile installs it), for the training job.
FROM python:3.11-slim AS service
WORKDIR /src
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md constraints.txt ./
COPY deploy/install-torch.sh ./deploy/
COPY models ./models
COPY stream ./stream
COPY training ./training
COPY benchmarks ./benchmarks
COPY sessionrec ./sessionrec
# Runs as an unprivileged user; /models belongs to it, so a fresh volume mounted there does too.
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sessionrec \
    && mkdir -p /models && chown 10001 /models
WORKDIR /app
USER 10001
EXPOSE 8080 9100
CMD ["sessionrec", "worker"]

FROM service AS train
# TORCH_INDEX_URL: another CPU wheel index (a mirror), if PyTorch's cannot be reached.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
USER 0
RUN sh /src/deploy/install-torch.sh python --no-cache-dir -c /src/constraints.txt
USER 10001
CMD ["sessionrec", "train", "--format", "topic", "--every", "24h"]
