"""The network, the strategies, the update rule, the schedules, the builder of a run, the training loop, checkpoints and metrics."""
