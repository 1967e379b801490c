"""Running the entry point in subprocesses: simulated devices, local multi-process runs."""
import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int) -> dict:
  """Environment of a CPU subprocess with `devices` simulated devices."""
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]
