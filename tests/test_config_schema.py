"""The schema: every field's default, the values it takes, and what a resume may change."""

from __future__ import annotations

import ml_collections
import pytest

from vgg_flax import config_schema, errors, train_state


def config_with(**fields) -> ml_collections.ConfigDict:
    """The default config with the dotted `fields` (`model__arch` for model.arch) set."""
    config = config_schema.default_config()
    config.update_from_flattened_dict({f.replace('__', '.'): v for f, v in fields.items()})
    return config


def test_the_default_config_has_every_field_at_its_default_and_is_valid():
    flat = config_schema.flatten(config_schema.to_plain(config_schema.default_config()))
    assert sorted(flat) == sorted(config_schema.FIELDS)
    assert config_schema.flatten(config_schema.default_config().to_dict()) == {
        name: field.default for name, field in config_schema.FIELDS.items()
    }
    config_schema.validate(config_schema.default_config())


def test_json_round_trip_gives_an_equal_config():
    config = config_schema.default_config()
    config.train.lr_decay_epochs = (2, 4)
    restored = config_schema.from_plain(config_schema.to_plain(config))
    assert restored.to_dict() == config.to_dict()
    assert restored.model.dense_features == (4096, 4096)


@pytest.mark.parametrize(
    'fields,message',
    [
        ({'seed': True}, 'config.seed=True must be an integer'),
        ({'population_size': 0}, 'config.population_size=0 must be a positive integer'),
        (
            {'members_over_devices': True},
            'config.members_over_devices=True must be False, or True for a population '
            '(config.population_size > 1)',
        ),
        ({'model__width_ratio': 3}, 'config.model.width_ratio=3 does not divide every conv width'),
        ({'model__width_ratio': 128}, 'use one of 1, 2, 4, 8, 16, 32, 64'),
        ({'model__width_ratio': 0}, 'config.model.width_ratio=0 must be a positive integer'),
        ({'model__width_ratio': -4}, 'config.model.width_ratio=-4 must be a positive integer'),
        (
            {'model__arch': 'vgg12'},
            "config.model.arch='vgg12' is not supported; use one of 'vgg11'",
        ),
        (
            {'model__conv_arch': (1, 64)},
            'config.model.conv_arch=(1, 64) must be () or (num_convs, features) pairs',
        ),
        ({'model__conv_arch': ((1, 64, 3),)}, 'must be () or (num_convs, features) pairs'),
        (
            {'model__conv_arch': ((0, 64),)},
            'config.model.conv_arch=((0, 64),) must be () or (num_convs, features) pairs of '
            'positive integers',
        ),
        (
            {'model__conv_arch': ((1, 64), (1, 96)), 'model__width_ratio': 64},
            'width of conv_arch ((1, 64), (1, 96)) [64, 96]; use one of 1, 2, 4, 8, 16, 32.',
        ),
        ({'model__num_classes': 0}, 'config.model.num_classes=0 must be a positive integer'),
        (
            {'model__dense_features': (4096, -1)},
            'config.model.dense_features=(4096, -1) must be a tuple of positive integers',
        ),
        ({'model__dropout_rate': 1.0}, 'config.model.dropout_rate=1.0 must be in [0, 1)'),
        ({'model__dtype': 'float64'}, "config.model.dtype='float64' is not supported"),
        (
            {'model__kernel_init': 'orthogonal'},
            "config.model.kernel_init='orthogonal' is not supported",
        ),
        ({'model__bias_init': 'ones'}, "config.model.bias_init='ones' is not supported"),
        ({'model__first_conv': 'fft'}, "config.model.first_conv='fft' is not supported"),
        (
            {'data__source': 'hub'},
            "config.data.source='hub' is not supported; use one of 'tfds', 'idx'",
        ),
        ({'data__source': 'idx'}, "config.data.source='idx' needs config.data.idx_dir"),
        (
            {'data__image_size': 16},
            'config.data.image_size=16 is too small: vgg11 halves the image 5 times',
        ),
        (
            {'data__max_test_examples': -1},
            'config.data.max_test_examples=-1 must be 0 (all) or a positive integer',
        ),
        (
            {'data__validation_examples': -1},
            'config.data.validation_examples=-1 must be 0 (none) or a positive integer',
        ),
        (
            {'data__validation_examples': 256, 'data__max_train_examples': 256},
            'config.data.validation_examples=256 leaves no training examples of the 256',
        ),
        ({'data__validation_examples': 60_000}, 'leaves no training examples of the 60,000'),
        ({'train__batch_size': 0}, 'config.train.batch_size=0 must be a positive integer'),
        (
            {'train__learning_rate': 0.0},
            'config.train.learning_rate=0.0 must be a finite number > 0',
        ),
        ({'train__momentum': -0.5}, 'config.train.momentum=-0.5 must be a finite number >= 0'),
        ({'train__lr_schedule': 'linear'}, "config.train.lr_schedule='linear' is not supported"),
        ({'train__num_epochs': -1}, 'config.train.num_epochs=-1 must be a positive integer'),
        ({'train__steps_per_call': 0}, 'config.train.steps_per_call=0 must be a positive integer'),
        (
            {'train__lr_decay_epochs': (2, 0)},
            'config.train.lr_decay_epochs=(2, 0) must be a tuple of positive integers',
        ),
        ({'train__ema_decay': 1.0}, 'config.train.ema_decay=1.0 must be in [0, 1)'),
        ({'train__label_smoothing': -0.1}, 'config.train.label_smoothing=-0.1 must be in [0, 1)'),
        ({'augment__translate': 14}, 'config.augment.translate=14 must be an integer from 0 to 13'),
        ({'augment__erase_aspect': (0.0, 1.0)}, 'config.augment.erase_aspect=(0.0, 1.0) must be'),
        ({'augment__erase_prob': 1.5}, 'config.augment.erase_prob=1.5 must be in [0, 1]'),
        (
            {'augment__erase_area': (0.5, 0.2)},
            'config.augment.erase_area=(0.5, 0.2) must be (min, max) with 0 < min <= max <= 1',
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field_and_what_it_must_be(fields, message):
    with pytest.raises(ValueError) as error:
        config_schema.validate(config_with(**fields))
    assert message in str(error.value) and '\n' not in str(error.value), error.value


def test_allowed_values_are_those_the_model_implements():
    assert config_schema.FIELDS['model.arch'].choices == ('vgg11', 'vgg13', 'vgg16', 'vgg19')
    assert config_schema.FIELDS['model.dtype'].choices == ('float32', 'bfloat16', 'float16')
    config_schema.validate(config_with(model__arch='vgg19', model__dtype='bfloat16'))


def test_conformed_gives_each_field_its_defaults_type_and_refuses_other_types():
    plain = config_schema.to_plain(config_schema.default_config())
    plain['train']['learning_rate'] = 1
    plain['model']['conv_arch'] = [[1, 64], [1, 128]]
    config = config_schema.conformed(ml_collections.ConfigDict(plain), 'a test')
    assert type(config.train.learning_rate) is float
    assert config.model.conv_arch == ((1, 64), (1, 128))
    plain['train']['num_epochs'] = 2.5
    with pytest.raises(errors.ConfigError, match=r'a test sets config.train.num_epochs=2.5; it '):
        config_schema.conformed(ml_collections.ConfigDict(plain), 'a test')


def test_a_former_field_name_is_told_its_current_name():
    plain = config_schema.to_plain(config_schema.default_config())
    plain['num_seeds'] = plain.pop('population_size')
    with pytest.raises(errors.ConfigError) as error:
        config_schema.conformed(ml_collections.ConfigDict(plain), 'old.py')
    assert str(error.value) == (
        'old.py sets config.num_seeds, which is not a config field; did you mean '
        'config.population_size?'
    )
    assert config_schema.unknown_field(['seed', 'num_seeds']) == ('num_seeds', 'population_size')
    assert config_schema.unknown_field(['train.lerning_rate']) == (
        'train.lerning_rate',
        'train.learning_rate',
    )
    assert config_schema.unknown_field(['seed', 'model.arch']) is None


def test_a_config_written_under_a_former_name_reads_under_the_current_one():
    expected = config_schema.to_plain(config_schema.default_config())
    expected['population_size'] = 4
    plain = {**expected, 'num_seeds': 4}
    del plain['population_size']
    assert config_schema.current_names(plain) == expected
    assert config_schema.current_names(expected) == expected


def test_resume_conflicts_ignore_only_harmless_fields():
    saved = config_schema.to_plain(config_schema.default_config())
    changed = config_schema.default_config()
    changed.train.num_epochs = 10
    changed.data.idx_dir = '/elsewhere'
    assert config_schema.resume_conflicts(saved, config_schema.to_plain(changed)) == []
    changed.model.width_ratio = 8
    changed.seed = 3
    conflicts = config_schema.resume_conflicts(saved, config_schema.to_plain(changed))
    assert conflicts == ['model.width_ratio: 4 in the run, 8 now', 'seed: 0 in the run, 3 now']


def test_a_resume_may_change_exactly_the_fields_the_schema_marks():
    assert config_schema.RESUMABLE_CHANGES == (
        'members_over_devices',
        'model.first_conv',
        'model.conv_impl',
        'data.tfds_data_dir',
        'data.idx_dir',
        'train.eval_batch_size',
        'train.num_epochs',
        'train.checkpoint_every_epochs',
        'train.keep_checkpoints',
        'train.log_every_steps',
        'train.steps_per_call',
        'eval.every_epochs',
    )
    saved = config_schema.to_plain(config_schema.default_config())
    for name, field in config_schema.FIELDS.items():
        other = {bool: lambda v: not v, str: lambda v: v + 'x', tuple: lambda v: (*v, 1)}.get(
            type(field.default), lambda v: v + 1
        )(field.default)
        changed = config_schema.default_config()
        changed.update_from_flattened_dict({name: other})
        conflicts = config_schema.resume_conflicts(saved, config_schema.to_plain(changed))
        assert len(conflicts) == (name not in config_schema.RESUMABLE_CHANGES), (name, conflicts)


@pytest.mark.parametrize(
    'schedule,warmup,refused',
    [
        ('constant', 0, False),
        ('constant', 2, False),
        ('step', 1, False),
        ('cosine', 0, True),
        ('cosine', 1, True),
    ],
)
def test_growing_num_epochs_is_refused_only_where_the_schedule_spans_the_run(
    schedule, warmup, refused
):
    config = config_schema.default_config()
    config.train.lr_schedule, config.train.warmup_epochs = schedule, warmup
    config.train.lr_decay_epochs = (3,)
    saved = config_schema.to_plain(config)
    config.train.num_epochs = 10
    conflicts = config_schema.resume_conflicts(saved, config_schema.to_plain(config))
    assert conflicts == (
        [
            "train.num_epochs: 5 in the run, 10 now (the cosine schedule spans the run's epochs, "
            'so every step still to come would change)'
        ]
        if refused
        else []
    )
    # Where it is allowed, the schedule's first epochs are those of the shorter run.
    short = train_state.create_learning_rate_fn(config_schema.from_plain(saved).train, 10)
    long = train_state.create_learning_rate_fn(config.train, 10)
    assert refused or all(short(step) == long(step) for step in range(50))
