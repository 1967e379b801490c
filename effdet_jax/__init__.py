"""EfficientDet in JAX/Flax."""
import sys

if sys.argv[:1] == ['-m']:   # `python -m effdet_jax.<command>`: runpy imports the package first
  from effdet_jax.runtime import startup
  startup.quiet()

__version__ = '0.1.0'
