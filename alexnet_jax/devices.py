"""Device set-up that must happen before JAX starts a backend."""

import jax
import ml_collections

from alexnet_jax import partitioning


def simulate_cpu_devices(config: ml_collections.ConfigDict) -> None:
  """Lets the CPU backend present as many devices as the strategy needs (one CPU, two
  'GPUs'). Does nothing for accelerators, which keep their real devices."""
  wanted = max(config.get('cpu_devices', 0),
               partitioning.devices_needed(config.parallelism, config.get('num_devices', 0)))
  jax.config.update('jax_num_cpu_devices', wanted)
