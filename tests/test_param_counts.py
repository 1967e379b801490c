"""Trainable and total parameter counts equal the official Keras models', to the parameter."""
import json
import os

import pytest

from effdet_jax.configs.efficientdet import MODEL_NAMES, get_config
from effdet_jax.models.variables import abstract_variables
from effdet_jax.tools.model_stats import count, count_params
from conftest import PARITY

# The official trainable counts (the paper's table rounds these).
OFFICIAL_TRAINABLE = {
    'd0': 3880067, 'd1': 6625898, 'd2': 8097039, 'd3': 12032296, 'd4': 20723675,
    'd5': 33653315, 'd6': 51871782, 'd7': 51871782, 'd7x': 77147166,
    'lite0': 3243470, 'lite1': 4248318, 'lite2': 5252334, 'lite3': 8350862,
    'lite3x': 9280862, 'lite4': 15130894,
}


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_parameter_counts_match_official(name):
  config = get_config(name)
  shapes = abstract_variables(config)
  trainable, total = count_params(config, shapes)
  assert trainable == OFFICIAL_TRAINABLE[name]
  path = os.path.join(PARITY, 'official_param_counts.json')
  if os.path.exists(path):
    official = json.load(open(path))[f'efficientdet-{name}']
    assert trainable == official['trainable']
    assert total == official['total']
    assert count(shapes['params']['backbone']) == official['backbone_trainable']


def test_d0_forward_cost_matches_the_paper():
  from effdet_jax.tools.model_stats import forward_flops
  multiply_adds = forward_flops(get_config('d0')) / 2
  assert abs(multiply_adds / 2.5e9 - 1) < 0.05, multiply_adds
