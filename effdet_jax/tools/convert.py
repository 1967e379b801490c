"""An official checkpoint -> a converted directory (orbax variables and the config).

    python -m effdet_jax.tools.convert --config effdet_jax/configs/efficientdet.py:d0 \
        --checkpoint efficientdet-d0.tar.gz --output converted/d0

Converting once saves reading TF checkpoints at every start; every command also
takes the official checkpoint itself.
"""
from absl import flags
from ml_collections import config_flags

from effdet_jax.models.official_checkpoint import load_official_checkpoint
from effdet_jax.runtime import cli
from effdet_jax.training import checkpoint

FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  variables = load_official_checkpoint(
      FLAGS.checkpoint, config, use_ema=FLAGS.use_ema,
      reinit_class_head=FLAGS.reinit_class_head, backbone_only=FLAGS.backbone_only)
  checkpoint.save_variables(FLAGS.output, variables, config)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'config file, e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.DEFINE_string('checkpoint', None, 'official checkpoint: directory, prefix or .tar.gz')
  flags.DEFINE_string('output', None, 'directory for the converted orbax checkpoint')
  flags.DEFINE_bool('use_ema', None, 'default: EMA weights when present')
  flags.DEFINE_bool('reinit_class_head', False, 'fresh class predictor (other num_classes)')
  flags.DEFINE_bool('backbone_only', False, 'EfficientNet ImageNet checkpoint: backbone only')
  flags.mark_flags_as_required(['config', 'checkpoint', 'output'])
  cli.run(main)
