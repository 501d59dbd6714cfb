"""Every experiment file loads, validates and builds a model that passes jax.eval_shape."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from vgg_flax import config_schema, models, sweep, validation

from conftest import EXPERIMENTS, load_experiment


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_loads_and_its_model_has_logits_of_num_classes(path):
    config = load_experiment(path)
    validation.validate_config(config)
    model = models.create_model(config.model)
    size = config.data.image_size
    x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert logits.shape == (2, config.model.num_classes)


def test_d2l_vgg11_is_the_lessons_recipe():
    config = load_experiment(next(p for p in EXPERIMENTS if p.stem == 'd2l_vgg11'))
    assert config.model.arch == 'vgg11'
    assert models.ARCHS['vgg11'] == ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    assert config.model.width_ratio == 4
    assert tuple(config.model.dense_features) == (4096, 4096)
    assert config.model.dropout_rate == 0.5
    assert config.model.kernel_init == 'xavier_uniform'
    assert not config.model.use_bn
    assert config.data.source == 'tfds'
    assert config.data.image_size == 224
    assert config.train.batch_size == 128
    assert config.train.learning_rate == 0.05
    assert config.train.momentum == 0.0
    assert config.train.weight_decay == 0.0
    assert config.train.lr_schedule == 'constant'
    assert config.train.num_epochs == 5


def test_quick_is_smaller_than_the_recipe():
    quick = load_experiment(next(p for p in EXPERIMENTS if p.stem == 'quick'))
    assert quick.model.arch == 'vgg11'
    assert quick.data.image_size < 224
    assert quick.model.width_ratio > 4


def experiment(stem):
    return load_experiment(next(p for p in EXPERIMENTS if p.stem == stem))


def test_the_ablations_last_point_is_the_best_recipe_at_its_budget():
    """The ablation adds the best recipe's parts one by one: its last point is that recipe, but
    for the width ratio and the epochs that fit its hour, so the two cannot drift apart."""
    ablation = next(p for p in EXPERIMENTS if p.stem == 'ablation')
    last = sweep.point_config(experiment('ablation'), sweep.load_sweep(str(ablation))[-1])
    differ = {
        key
        for key, value in config_schema.flatten(config_schema.to_plain(last)).items()
        if value != config_schema.flatten(config_schema.to_plain(experiment('best_32px')))[key]
    }
    assert differ == {'model.width_ratio', 'train.num_epochs'}
    first = sweep.point_config(experiment('ablation'), sweep.load_sweep(str(ablation))[0])
    lesson = experiment('d2l_vgg11')
    assert config_schema.to_plain(first.train) == {
        **config_schema.to_plain(lesson.train),
        'num_epochs': 10,
        'log_every_steps': 200,
    }
    assert not first.model.use_bn and not first.eval.tta


def test_native_28px_is_the_best_recipe_on_three_blocks_at_28_px():
    """native_28px.py changes best_32px.py's network and image size only (and its epochs)."""
    native, best = (
        config_schema.flatten(config_schema.to_plain(experiment(stem)))
        for stem in ('native_28px', 'best_32px')
    )
    assert {key for key in native if native[key] != best[key]} == {
        'model.conv_arch',
        'data.image_size',
        'train.num_epochs',
    }
    assert native['data.image_size'] == 28 and len(native['model.conv_arch']) == 3


def test_the_same_time_search_changes_only_the_batch_and_what_follows_from_it():
    """Its points are best.py on the validation split but for the batch size, the epochs that
    fill best.py's time, and the learning rate and weight average scaled to the batch."""
    path = next(p for p in EXPERIMENTS if p.stem == 'same_time_search')
    best = config_schema.flatten(config_schema.to_plain(experiment('best')))
    changed = []
    for point in sweep.load_sweep(str(path)):
        config = sweep.point_config(experiment('same_time_search'), point)
        flat = config_schema.flatten(config_schema.to_plain(config))
        changed.append({key: flat[key] for key in flat if flat[key] != best[key]})
    assert changed == [
        {
            'data.validation_examples': 5000,
            'train.batch_size': 64,
            'train.ema_decay': 0.9995,
            'train.learning_rate': 0.05,
            'train.num_epochs': 70,
        },
        {
            'data.validation_examples': 5000,
            'train.batch_size': 64,
            'train.ema_decay': 0.9995,
            'train.num_epochs': 70,
        },
        {'data.validation_examples': 5000},
    ]


def test_best_batch64_is_the_same_time_searchs_choice_with_its_test_time_views():
    """best_batch64.py is the search's lr-0.1 point on the whole training split, with the views
    chosen on the validation set and evaluated less often."""
    path = next(p for p in EXPERIMENTS if p.stem == 'same_time_search')
    point = next(p for p in sweep.load_sweep(str(path)) if p['name'] == 'batch-64-70-epochs-lr-0.1')
    chosen = config_schema.flatten(
        config_schema.to_plain(sweep.point_config(experiment('same_time_search'), point))
    )
    recipe = config_schema.flatten(config_schema.to_plain(experiment('best_batch64')))
    assert {key: recipe[key] for key in recipe if recipe[key] != chosen[key]} == {
        'data.validation_examples': 0,
        'eval.tta_translate': 2,
        'eval.every_epochs': 35,
    }
