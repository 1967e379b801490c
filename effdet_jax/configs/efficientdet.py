"""EfficientDet D0-D7x and Lite0-4/3x: one ConfigDict holding every model, data,
train and eval setting.

Defaults are the official ones (google/automl `efficientdet/hparams_config.py`).
Use as `--config effdet_jax/configs/efficientdet.py:d3` (or `:lite0`) and override any field from the
command line, e.g. `--config.model.fpn_num_filters=96`. `model` and
`postprocess` are read by the model and the detector; `data`, `loss` and
`train` hold the official training recipe for the code built on top of them.
"""
import ml_collections

# name: (backbone, image_size, fpn_num_filters, fpn_cell_repeats, box_class_repeats, extra)
_MODELS = {
    'd0': ('efficientnet-b0', 512, 64, 3, 3, {}),
    'd1': ('efficientnet-b1', 640, 88, 4, 3, {}),
    'd2': ('efficientnet-b2', 768, 112, 5, 3, {}),
    'd3': ('efficientnet-b3', 896, 160, 6, 4, {}),
    'd4': ('efficientnet-b4', 1024, 224, 7, 4, {}),
    'd5': ('efficientnet-b5', 1280, 288, 7, 4, {}),
    'd6': ('efficientnet-b6', 1280, 384, 8, 5, {'fpn_weight_method': 'sum'}),
    'd7': ('efficientnet-b6', 1536, 384, 8, 5,
           {'fpn_weight_method': 'sum', 'anchor_scale': 5.0}),
    'd7x': ('efficientnet-b7', 1536, 384, 8, 5,
            {'fpn_weight_method': 'sum', 'max_level': 8}),
}
# The Lite family: for phones and edge devices, made easy to quantize (ReLU6,
# plain-sum BiFPN, inputs scaled to about [-1, 1]).
_LITE = {'fpn_weight_method': 'sum', 'act_type': 'relu6',
         'mean_rgb': (127.0, 127.0, 127.0), 'stddev_rgb': (128.0, 128.0, 128.0)}
_MODELS.update({
    'lite0': ('efficientnet-lite0', 320, 64, 3, 3, dict(_LITE, anchor_scale=3.0)),
    'lite1': ('efficientnet-lite1', 384, 88, 4, 3, dict(_LITE, anchor_scale=3.0)),
    'lite2': ('efficientnet-lite2', 448, 112, 5, 3, dict(_LITE, anchor_scale=3.0)),
    'lite3': ('efficientnet-lite3', 512, 160, 6, 4, _LITE),
    'lite3x': ('efficientnet-lite3', 640, 200, 6, 4, dict(_LITE, anchor_scale=3.0)),
    'lite4': ('efficientnet-lite4', 640, 224, 7, 4, _LITE),
})

MODEL_NAMES = tuple(_MODELS)


def model_config(name: str) -> ml_collections.ConfigDict:
  """The architecture settings of one EfficientDet size."""
  if name not in _MODELS:
    raise ValueError(f'unknown EfficientDet size {name!r}; expected one of {MODEL_NAMES}')
  backbone, image_size, filters, cells, heads, extra = _MODELS[name]
  m = ml_collections.ConfigDict()
  m.name = f'efficientdet-{name}'
  m.backbone = backbone
  # (width, depth) coefficients overriding the backbone's, for small models; () keeps them.
  m.backbone_scaling = ()
  # (height, width); each level halves it rounding up (Lite0's 320: 40, 20, 10, 5, 3).
  m.image_size = (image_size, image_size)
  m.min_level = 3
  m.max_level = 7
  m.num_classes = 90
  m.num_scales = 3
  m.aspect_ratios = (1.0, 2.0, 0.5)
  m.anchor_scale = 4.0
  m.fpn_num_filters = filters
  m.fpn_cell_repeats = cells
  m.box_class_repeats = heads
  m.fpn_weight_method = 'fastattn'     # 'fastattn' | 'attn' (softmax) | 'sum'
  m.separable_conv = True
  m.apply_bn_for_resampling = True
  m.conv_after_downsample = False
  m.act_type = 'swish'
  m.batch_norm_momentum = 0.99
  m.batch_norm_epsilon = 1e-3
  # Stochastic depth. The official D0 turns it off in the backbone; the other
  # backbones keep EfficientNet's 0.8. 0 disables it.
  m.backbone_survival_prob = 0.0 if backbone == 'efficientnet-b0' else 0.8
  m.head_survival_prob = 0.0
  # Compute dtype: 'float32', 'bfloat16', 'float16' (parameters stay float32) or 'float64'
  # (checks only); the same field as train.precision (effdet_jax/runtime/precision.py).
  m.dtype = 'float32'
  # The BiFPN's nearest upsampling in float32 whatever the dtype, as the official's
  # `_upsample2d` casts. Only float64 changes: it rounds there as the official
  # float64 model does, for comparisons with it (docs/parity.md).
  m.upsample_in_float32 = False
  # Rematerialization: recompute backbone blocks and BiFPN cells in the backward
  # pass (less activation memory, ~1/3 more compute), for the big models.
  m.remat = False
  # Convolution formulation: 'auto' picks per backend (see models/layers.py).
  m.conv_impl = 'auto'
  # Images per chunk of the inference forward pass; 0 picks per backend
  # (see models/inference.py).
  m.inference_chunk_size = 0
  m.mean_rgb = (123.675, 116.28, 103.53)
  m.stddev_rgb = (58.395, 57.12, 57.375)
  for key, value in extra.items():
    m[key] = value
  return m


def split_config(tfds_split: str) -> ml_collections.ConfigDict:
  """Where one split lives, for each source; only the fields of `data.source` are read."""
  split = ml_collections.ConfigDict()
  split.tfds_name = 'coco/2017'
  split.tfds_split = tfds_split
  split.data_dir = ''          # TFDS data_dir; may be gs://
  split.annotations = ''       # COCO-JSON annotation file
  split.images = ''            # the folder its file_names are relative to
  split.file_pattern = ''      # TFRecord shards, e.g. gs://bucket/coco/train-*
  return split


def get_config(arg: str = 'd0') -> ml_collections.ConfigDict:
  """The paper's COCO recipe for one size (`arg` in d0 ... d7, d7x, lite0 ... lite4, lite3x)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(arg)

  config.data = ml_collections.ConfigDict()
  # Where examples come from: 'tfds' | 'coco_json' | 'tfrecord' | 'synthetic' (see effdet_jax/data/).
  config.data.source = 'tfds'
  config.data.train = split_config('train')
  config.data.val = split_config('validation')
  # source='synthetic': generated shapes (effdet_jax/data/synthetic.py), written
  # under root ('' = <workdir>/data) on first use and read as COCO-JSON.
  config.data.synthetic = ml_collections.ConfigDict(
      {'root': '', 'num_train': 2000, 'num_val': 200, 'image_size': 256, 'seed': 0})
  # Categories: '' = the dataset's own list, 'coco' = COCO 2017's, or a JSON file
  # with a COCO "categories" list. Scheme: 'id_minus_one' (class = id - 1, the
  # official 90-class COCO layout) or 'contiguous' (sorted ids -> 0..K-1).
  config.data.categories = ''
  config.data.category_scheme = 'id_minus_one'
  config.data.shuffle_buffer_size = 1024   # tfds / tfrecord; COCO-JSON shuffles fully
  config.data.input_rand_hflip = True
  config.data.jitter_min = 0.1
  config.data.jitter_max = 2.0
  # GridMask on the training images, with the official's probabilities (effdet_jax/data/gridmask.py).
  config.data.grid_mask = False
  # '' (none), 'v0' ... 'v3' (the official AutoAugment policies; v0 is the paper's) or
  # 'randaug' (the official RandAugment), effdet_jax/data/autoaugment.py.
  config.data.autoaugment_policy = ''
  # Mosaic: each training image shares the input with the next three of the stream, as
  # the official aug/mosaic.py composes them (effdet_jax/data/mosaic.py); before the above.
  config.data.mosaic = False
  config.data.max_instances_per_image = 100
  config.data.skip_crowd_during_training = True

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 0.25              # focal loss
  config.loss.gamma = 1.5
  config.loss.label_smoothing = 0.0
  config.loss.delta = 0.1               # Huber box loss
  config.loss.box_loss_weight = 50.0
  config.loss.iou_loss_type = ''        # '' (none) | 'iou' | 'giou' | 'diou' | 'ciou'
  config.loss.iou_loss_weight = 1.0
  # True: decode the IoU loss's rows with the anchors in the official's order (rows level by
  # level, images within a level; anchors image by image), as tf2/train_lib.py does;
  # False: each row with its own anchor. IoU and GIoU differ only where a coordinate is masked.
  config.loss.iou_official_anchor_order = True

  config.train = ml_collections.ConfigDict()
  config.train.global_batch_size = 128
  # Length: num_steps if > 0, else num_epochs over the training split.
  config.train.num_steps = 0
  config.train.num_epochs = 600 if arg in ('d7', 'd7x') else 300
  # 'sgd' (momentum) | 'adam' (beta_1 = momentum on the tf2 path; see optim.adam_hyperparameters).
  config.train.optimizer = 'sgd'
  config.train.momentum = 0.9
  # Peak learning rate for the global batch: 0.08 per 64 images (set it with the batch).
  config.train.learning_rate = 0.08 * config.train.global_batch_size / 64
  # Linear warm-up from lr_warmup_init (the official suggests 0.0008 for Adam) over
  # warmup_steps if > 0, else lr_warmup_epochs; then lr_decay (effdet_jax/training/optim.py):
  # 'cosine' | 'stepwise' (x0.1 at first_lr_drop_epoch, x0.01 at second_lr_drop_epoch)
  # | 'polynomial' ((1 - step / total) ** poly_lr_power) | 'constant' (no warm-up; TF1).
  config.train.lr_warmup_init = 0.008
  config.train.warmup_steps = 0
  config.train.lr_warmup_epochs = 1.0
  config.train.lr_decay = 'cosine'
  config.train.first_lr_drop_epoch = 200.0
  config.train.second_lr_drop_epoch = 250.0
  config.train.poly_lr_power = 0.9
  config.train.clip_gradients_norm = 10.0
  config.train.weight_decay = 4e-5      # L2 on kernels, as the official
  config.train.ema_decay = 0.9998       # 0 disables the EMA
  # Which official training code to reproduce where the two differ (docs/parity.md):
  # 'tf1' (det_model_fn.py, TPUEstimator: what trained the released checkpoints)
  # or 'tf2' (tf2/train_lib.py, Keras): the momentum form, the EMA's first decay,
  # whether the EMA covers BatchNorm statistics, and whether L2 covers frozen kernels.
  config.train.official_path = 'tf1'
  # 'float32'; 'bfloat16' or 'float16' compute with float32 weights; or 'float64'
  # everything, for numerical checks (effdet_jax/runtime/precision.py). The same
  # field as model.dtype.
  precision = ml_collections.FieldReference(config.model.dtype)
  config.model.dtype = precision
  config.train.precision = precision
  # float16 only, the dynamic loss scale of Keras' LossScaleOptimizer (the official's
  # mixed_float16; training/loss_scale.py): it starts here, doubles after this many
  # finite steps in a row, and halves, skipping the step, when a gradient overflows.
  config.train.loss_scale = 2.0 ** 15
  config.train.loss_scale_growth_steps = 2000
  # Variables not trained: a regex on '/'-joined parameter paths, e.g. '^backbone/'.
  config.train.freeze_regex = ''
  # Start from an official TF checkpoint or a converted one (all of it, or only the
  # EfficientNet backbone); a class head of another size is re-initialized.
  config.train.init_checkpoint = ''
  config.train.init_backbone_only = False
  # 'stop' the run naming the step, or 'skip' the update, when the loss is not finite.
  config.train.on_nonfinite = 'stop'
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_every_steps = 0     # 0: only at the end (train_and_eval)
  # A profiler trace of profile_steps steps after step profile_first_step (0: none),
  # in <workdir>/tensorboard/plugins/profile/ (TensorBoard's Profile tab; docs/training.md).
  config.train.profile_steps = 0
  config.train.profile_first_step = 10
  config.model_parallelism = 1          # size of the mesh's `model` axis

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'             # a split of config.data
  config.eval.global_batch_size = 8     # a multiple of the device count
  # COCO annotation file to score against; '' = data.<split>.annotations for
  # coco_json, else ground truth built from the dataset (at most
  # max_instances_per_image boxes per image).
  config.eval.annotations = ''
  config.eval.num_images_to_draw = 4    # validation images with boxes, to TensorBoard
  config.eval.draw_min_score = 0.3

  config.postprocess = ml_collections.ConfigDict()
  config.postprocess.nms_method = 'gaussian'   # 'gaussian' (soft-NMS) | 'hard'
  config.postprocess.iou_threshold = 0.5        # hard NMS
  config.postprocess.sigma = 0.5                # soft-NMS: exp(-iou^2 / sigma)
  config.postprocess.score_threshold = 0.001
  config.postprocess.max_nms_inputs = 5000      # top scores over anchors x classes; 0: best class per anchor
  config.postprocess.max_detections = 100
  # The official inference path is class-agnostic NMS, its evaluation path per class.
  config.postprocess.infer_per_class = False
  config.postprocess.eval_per_class = True
  return config
