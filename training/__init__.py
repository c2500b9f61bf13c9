"""The training job: data sources, the torch model, the trainer, evaluation and export."""
