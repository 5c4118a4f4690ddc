"""Training runs: batch preparation, validation metrics and tables, gradient clipping, the alpha schedule, resuming."""
