"""Process set-up before JAX starts: the allocator, simulated CPU devices, joining a multi-process run."""
