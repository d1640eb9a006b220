"""Device set-up that must happen before JAX starts a backend."""

import jax
import ml_collections

from alexnet_jax.core import layerwise


def simulate_cpu_devices(config: ml_collections.ConfigDict, num_processes: int = 1,
                         per_process: int = 0) -> int:
  """Lets the CPU backend present as many devices as the strategy needs (one CPU, two
  'GPUs'), split evenly over `num_processes` processes, or `per_process` if given. Does nothing
  for accelerators, which keep their real devices. Returns the per-process count."""
  wanted = cpu_devices_per_process(config, num_processes, per_process)
  jax.config.update('jax_num_cpu_devices', wanted)
  return wanted


def cpu_devices_per_process(config: ml_collections.ConfigDict, num_processes: int = 1,
                            per_process: int = 0) -> int:
  """The count simulate_cpu_devices presents: strategies.devices_needed over the processes."""
  needed = layerwise.devices_needed(config.parallelism, config.num_devices, config.layerwise)
  return per_process or -(-needed // max(num_processes, 1))
