"""What the commands comms, bench, ablate and figures do (the commands are alexnet_jax/<name>.py)."""
