from setuptools import find_packages, setup

setup(
    name='effdet_jax',
    version='0.1.0',
    description='EfficientDet D0-D7x in JAX/Flax: official checkpoints, sharded training, export.',
    packages=find_packages(include=['effdet_jax', 'effdet_jax.*']),
    # The CPU kernels' sources, compiled on first use (effdet_jax/runtime/cpu_kernels/__init__.py),
    # and the sweep files (loaded by path, not imported).
    package_data={'effdet_jax.runtime.cpu_kernels': ['*.cc', '*.h'],
                  'effdet_jax.configs': ['sweeps/*.py']},
    license='Apache-2.0',
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.7',
        'flax>=0.10',
        'clu>=0.0.12',
        'orbax-checkpoint>=0.11',
        'ml_collections>=1.0',
        'absl-py>=2.0',
        'numpy>=1.26',
        'tensorflow-cpu>=2.16',
        'tensorflow-datasets>=4.9',
        'tensorboard>=2.16',
        'pycocotools>=2.0.8',
        'pillow>=10',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'hypothesis>=6', 'scikit-image>=0.22'],
        # XLA's TPU compiler at the versions the TPU programs were validated with
        # (tools/memory.py --target, tests/test_tpu_planning.py); TPU VMs train with it.
        'tpu': ['jax==0.10.2', 'jaxlib==0.10.2', 'libtpu==0.0.42.1'],
        # XLA's CUDA compiler, for planning GPU runs on a machine without one
        # (tools/memory.py --target gpu:h200). Not in CI: without a CUDA driver
        # its import prints "Could not find cuda drivers" in every JAX process.
        'gpu-plan': ['jax==0.10.2', 'jaxlib==0.10.2', 'jax-cuda12-plugin==0.10.2'],
    },
)
