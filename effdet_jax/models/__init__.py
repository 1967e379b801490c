"""EfficientDet as Flax modules."""
import ml_collections

from effdet_jax.models.efficientdet import EfficientDet


def build_model(config: ml_collections.ConfigDict) -> EfficientDet:
  """The EfficientDet module for a full config (or its `model` section)."""
  return EfficientDet(config.model if 'model' in config else config)


def image_hw(config: ml_collections.ConfigDict):
  """The model's input `(height, width)` from a full config."""
  size = config.model.image_size
  return (size, size) if isinstance(size, int) else tuple(size)


__all__ = ['EfficientDet', 'build_model', 'image_hw']
