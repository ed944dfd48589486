"""Lightning glue: UnlearnCallback, checkpoints, loggers, progress bars, the unlearn command."""
