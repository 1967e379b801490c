"""Export a trained model: an inference bundle (`load_bundle`), a TF SavedModel,
and a checkpoint in the official (google/automl) layout.

    python -m effdet_jax.export --config effdet_jax/configs/efficientdet.py:d0 \
        --checkpoint PATH --output DIR [--format bundle|saved_model|tf_checkpoint|all]
"""
from effdet_jax.export.bundle import load_bundle
from effdet_jax.export.exporter import export

__all__ = ['export', 'load_bundle']
