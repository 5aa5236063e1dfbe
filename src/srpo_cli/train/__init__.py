"""Training machinery every stage shares: the loop (progress, metrics, checkpoints, resume, signals),
checkpoint files, devices and threads, and the optimizer step."""
