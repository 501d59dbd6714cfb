"""Sweep definitions: axes, products and chains of config overrides."""

from vgg_flax import hyper


def test_product_and_chain():
    points = hyper.product(hyper.axis('model.arch', ['vgg11', 'vgg16']),
                           hyper.axis('model.width_ratio', [4, 8]))
    assert points == [{'model.arch': 'vgg11', 'model.width_ratio': 4},
                      {'model.arch': 'vgg11', 'model.width_ratio': 8},
                      {'model.arch': 'vgg16', 'model.width_ratio': 4},
                      {'model.arch': 'vgg16', 'model.width_ratio': 8}]
    both = hyper.chain(hyper.axis('seed', [0]), hyper.axis('train.learning_rate', [0.1]))
    assert both == [{'seed': 0}, {'train.learning_rate': 0.1}]
