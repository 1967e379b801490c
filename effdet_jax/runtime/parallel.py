"""The device mesh and how host batches become global arrays on it.

The mesh has a `data` axis over which batches are split and a `model` axis
(size 1 unless asked) kept for model parallelism. Every host passes only its
own slice of the global batch; `jax.make_array_from_process_local_data`
assembles the global `jax.Array` without any host seeing the whole batch.
"""
import collections
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def create_mesh(model_parallelism: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """All devices of all hosts as a `(data, model)` mesh."""
  devices = list(jax.devices() if devices is None else devices)
  if model_parallelism < 1 or len(devices) % model_parallelism:
    raise ValueError(f'{len(devices)} devices do not split into model-parallel groups of '
                     f'{model_parallelism}')
  grid = np.asarray(devices).reshape(len(devices) // model_parallelism, model_parallelism)
  return Mesh(grid, ('data', 'model'))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over `data`, everything else replicated."""
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
  """Host values that are the same on every process -> arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def check_global_batch(global_batch_size: int, mesh: Mesh):
  """The global batch must split evenly over the data axis."""
  n = mesh.shape['data']
  if global_batch_size % n:
    raise ValueError(f'config.train.global_batch_size={global_batch_size} does not divide by the '
                     f'{n} devices of the data axis ({jax.device_count()} devices, '
                     f'{jax.process_count()} processes); use a multiple of {n}')


def to_global(batch: Dict[str, np.ndarray], sharding: NamedSharding) -> Dict[str, jax.Array]:
  """This host's slice of each array -> the global arrays (all hosts call this)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def prefetch_to_devices(batches: Iterable[Dict[str, np.ndarray]], sharding: NamedSharding,
                        device_keys: Sequence[str], size: int = 2
                        ) -> Iterator[Tuple[Dict[str, jax.Array], Dict[str, np.ndarray]]]:
  """Yield `(global arrays of device_keys, the rest on the host)`, keeping `size`
  batches in flight so the copy to the devices overlaps the previous step."""
  queue = collections.deque()
  iterator = iter(batches)

  def put():
    batch = next(iterator, None)
    if batch is None:
      return False
    on_device = to_global({k: batch[k] for k in device_keys}, sharding)
    queue.append((on_device, {k: v for k, v in batch.items() if k not in device_keys}))
    return True

  for _ in range(size):
    if not put():
      break
  while queue:
    item = queue.popleft()
    put()
    yield item
