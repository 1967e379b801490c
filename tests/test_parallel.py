"""Host batches -> global arrays on a (data, model) mesh, on 8 simulated devices."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from effdet_jax.runtime import parallel
    assert jax.device_count() == 8
    mesh = parallel.create_mesh(model_parallelism=2)
    assert dict(mesh.shape) == {'data': 4, 'model': 2}
    sharding = parallel.batch_sharding(mesh)
    batches = [{'image': np.full((8, 2, 2, 3), i, np.float32), 'image_id': np.arange(8) + 10 * i}
               for i in range(3)]
    out = list(parallel.prefetch_to_devices(batches, sharding, ['image']))
    assert len(out) == 3
    for i, (on_device, on_host) in enumerate(out):
      image = on_device['image']
      assert isinstance(image, jax.Array) and image.shape == (8, 2, 2, 3)
      assert {s.data.shape[0] for s in image.addressable_shards} == {2}
      np.testing.assert_array_equal(np.asarray(image), i)
      np.testing.assert_array_equal(on_host['image_id'], np.arange(8) + 10 * i)
    parallel.check_global_batch(8, mesh)
    try:
      parallel.check_global_batch(6, mesh)
    except ValueError as e:
      assert 'does not divide by the 4 devices of the data axis' in str(e), e
    else:
      raise AssertionError('6 over 4 data devices accepted')
    print('ok')
''')


def test_global_arrays_on_eight_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith('ok')
