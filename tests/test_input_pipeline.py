"""The training stream: seeded, resumable at any step, split over hosts; eval covers each image once."""
import copy
import itertools

import numpy as np
import pytest

from data_helpers import coco_config, train_batches
from effdet_jax.data import input_pipeline, synthetic


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('shapes'))
  synthetic.ensure_dataset(root, num_train=10, num_val=7, image_size=64, seed=3)
  c = coco_config(synthetic.annotation_path(root, 'train'), synthetic.image_dir(root, 'train'))
  c.data.val.annotations = synthetic.annotation_path(root, 'val')
  c.data.val.images = synthetic.image_dir(root, 'val')
  return c


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_same_seed_same_batches_other_seed_othertrain_batches(config):
  first = train_batches(config, 4)
  _assert_same(first, train_batches(config, 4))
  other = copy.deepcopy(config)
  other.seed = 1
  assert not np.array_equal(first[0]['image'], train_batches(other, 1)[0]['image'])


def test_resume_at_step_k_sees_the_uninterruptedtrain_batches(config):
  # 10 images, batches of 4: step 3 starts inside the second epoch.
  uninterrupted = train_batches(config, 7)
  for k in (1, 3, 5):
    _assert_same(uninterrupted[k:], train_batches(config, 7 - k, start_step=k))


def test_each_epoch_is_a_new_permutation(config):
  ids = np.concatenate([b['image_id'] for b in train_batches(config, 5)])
  assert sorted(ids[:10]) == list(range(1, 11)) and sorted(ids[10:20]) == list(range(1, 11))
  assert not np.array_equal(ids[:10], ids[10:20])


def test_two_hosts_read_their_slices_of_the_same_globaltrain_batches(config):
  hosts = []
  for host in range(2):
    data = input_pipeline.train_data(config, process_index=host, process_count=2)
    hosts.append(list(itertools.islice(data.dataset.as_numpy_iterator(), 5)))
  one_host = train_batches(config, 5)
  for step in range(5):
    # Each host reads its half of the global batch; together they are the 1-host batch.
    assert len(hosts[0][step]['image_id']) == len(hosts[1][step]['image_id']) == 2
    joined = {k: np.concatenate([hosts[0][step][k], hosts[1][step][k]]) for k in one_host[step]}
    _assert_same([joined], [one_host[step]])


def test_batch_layout_and_bfloat16(config):
  batch = train_batches(config, 1)[0]
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.float32
  assert batch['boxes'].shape == (4, 100, 4) and batch['classes'].shape == (4, 100)
  valid = batch['classes'] >= 0
  assert valid.any() and (batch['boxes'][valid][:, 2:] > batch['boxes'][valid][:, :2]).all()
  assert (batch['boxes'][valid] <= 63).all() and (batch['boxes'][valid] >= 0).all()
  bf16 = copy.deepcopy(config)
  bf16.model.dtype = 'bfloat16'
  assert train_batches(bf16, 1)[0]['image'].dtype.name == 'bfloat16'


def test_global_batch_must_divide_over_hosts(config):
  with pytest.raises(ValueError, match='global batch size 4 does not divide by the 3 processes'):
    input_pipeline.train_data(config, process_index=0, process_count=3)


def test_eval_covers_every_image_once_with_padding_on_uneven_hosts(config):
  # 7 images over 3 hosts (3, 2, 2) in batches of 2 per host: 2 batches each, 5 padding rows.
  seen, counts = [], []
  for host in range(3):
    data = input_pipeline.eval_data(config, batch_size=6, process_index=host, process_count=3)
    batches = list(data.dataset.as_numpy_iterator())
    assert len(batches) == data.num_batches == 2
    valid = np.concatenate([b['image_valid'] for b in batches])
    seen.extend(np.concatenate([b['image_id'] for b in batches])[valid].tolist())
    counts.append(data.num_examples)
  assert sorted(seen) == list(range(1, 8)) and counts == [3, 2, 2]
  batch = next(input_pipeline.eval_data(config, 7, process_index=0, process_count=1)
               .dataset.as_numpy_iterator())
  # Ground truth in original pixels, scale maps input pixels back.
  sizes = batch['original_size']
  np.testing.assert_allclose(batch['image_scale'], 1 / np.minimum(64 / sizes[:, 0], 64 / sizes[:, 1]),
                             rtol=1e-6)
  gt = batch['gt_boxes'][batch['gt_category_ids'] >= 0]
  assert (gt[:, 2] <= sizes.max()).all() and len(gt) > 0
