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
COPY sessionrec ./sessionrec
RUN pip install --no-cache-dir .
EXPOSE 9100
CMD ["sessionrec", "worker"]

FROM service AS train
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
CMD ["sessionrec", "train", "--format", "topic", "--every", "24h"]
