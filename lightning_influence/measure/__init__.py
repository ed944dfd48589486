"""The unlearning field's measures and torchmetrics metrics."""
