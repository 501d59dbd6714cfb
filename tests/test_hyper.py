"""Sweep definitions: axes, products and chains of config overrides, and what a point is."""

import re

import numpy as np
import pytest

from vgg_flax import hyper


def test_product_and_chain():
    points = hyper.product(
        hyper.axis('model.arch', ['vgg11', 'vgg16']), hyper.axis('model.width_ratio', [4, 8])
    )
    assert points == [
        {'model.arch': 'vgg11', 'model.width_ratio': 4},
        {'model.arch': 'vgg11', 'model.width_ratio': 8},
        {'model.arch': 'vgg16', 'model.width_ratio': 4},
        {'model.arch': 'vgg16', 'model.width_ratio': 8},
    ]
    both = hyper.chain(hyper.axis('seed', [0]), hyper.axis('train.learning_rate', [0.1]))
    assert both == [{'seed': 0}, {'train.learning_rate': 0.1}]


def test_cumulative_points_carry_every_earlier_step_and_their_name():
    points = hyper.cumulative(
        ('base', {}),
        ('bn', {'model.use_bn': True, 'train.lr': 0.1}),
        ('slower', {'train.lr': 0.05}),
    )
    assert points == [
        {'name': 'base'},
        {'name': 'bn', 'model.use_bn': True, 'train.lr': 0.1},
        {'name': 'slower', 'model.use_bn': True, 'train.lr': 0.05},
    ]


@pytest.mark.parametrize(
    ('points', 'says'),
    [
        (None, 'returns NoneType, not a list of points'),
        ({'seed': 1}, 'returns dict, not a list of points'),
        ('seed', 'returns str, not a list of points'),
        ([], 'returns no points'),
        ([1, 2], 'point 0 is of type int, not a dict'),
        ([{'seed': 0}, ['seed', 1]], 'point 1 is of type list, not a dict'),
        ([{1: 2}], 'point 0 has the key 1, not a dotted config field'),
        ([{'name': 3}], 'point 0 is named 3: a name is a non-empty string'),
        ([{'model.width_ratio': np.int64(4)}], 'model.width_ratio to np.int64(4), which is no'),
        ([{'data.idx_dir': object()}], 'sets data.idx_dir to <object'),
        ([{'train.learning_rate': float('nan')}], 'sets train.learning_rate to nan'),
        ([{'model.dense_features': (64, {})}], 'sets model.dense_features to (64, {})'),
    ],
)
def test_points_of_another_shape_are_refused_saying_what_is_wrong(points, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        hyper.check_points(points)


def test_config_values_pass_as_they_are():
    points = (
        {'name': 'a', 'model.width_ratio': 8, 'train.learning_rate': 0.1, 'model.use_bn': True},
        {'model.dense_features': (64, 64), 'data.idx_dir': '../x', 'model.conv_arch': ()},
        {'data.tfds_data_dir': None, 'model.conv_arch': ((1, 64), (1, 128))},
    )
    assert hyper.check_points(points) == list(points)
