"""Read a whole split with the training code and count what it will use and what it leaves out.

    python -m effdet_jax.tools.inspect_dataset --config effdet_jax/configs/efficientdet.py:d0 \
        --config.data.source=coco_json --config.data.train.annotations=ann.json \
        --config.data.train.images=DIR [--split train]

The last line is one JSON object: `images` (images training uses, background-only
ones included), `images_skipped` by reason, `boxes` (ground-truth boxes training
uses), `boxes_dropped` by reason, `boxes_clipped` (kept, cut to the image), and
`categories`. Every image and box of the source is counted exactly once.
"""
import json

from absl import flags
from ml_collections import config_flags

from effdet_jax.data import input_pipeline
from effdet_jax.runtime import cli

FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  source = input_pipeline.open_source(config, FLAGS.split)
  result = input_pipeline.scan(config, FLAGS.split, source=source)
  skipped = {k: v for k, v in result['images_skipped'].items() if v}
  dropped = {k: v for k, v in result['boxes_dropped'].items() if v}
  print(f"{source.name}: {result['images']} images and {result['boxes']} boxes used, "
        f"{result['categories']} categories; images skipped: {skipped or 'none'}; "
        f"boxes dropped: {dropped or 'none'}; boxes clipped to the image: {result['boxes_clipped']}")
  print(json.dumps(result))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.DEFINE_string('split', 'train', 'which config.data split to read')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
