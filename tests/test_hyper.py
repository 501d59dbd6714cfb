"""Sweep definitions: axes, products and chains of config overrides."""

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
