"""Export a trained model: an inference bundle (`load_bundle`) and a TF SavedModel.

    python -m effdet_jax.export --config configs/efficientdet.py:d0 \
        --checkpoint PATH --output DIR [--format bundle|saved_model|all]
"""
from effdet_jax.export.bundle import load_bundle
from effdet_jax.export.exporter import export

__all__ = ['export', 'load_bundle']
