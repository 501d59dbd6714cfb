"""Experiment files: each loads into a config of the schema, or fails in one line naming the file
and the field."""

from __future__ import annotations

import pytest

from vgg_flax import config_schema, config_utils, errors

# The body of a config file after `import ml_collections` and `from vgg_flax import
# config_utils`; each sets something the defaults do not have, or fails to load.
DEFAULTS = 'def get_config():\n    config = config_schema.default_config()\n'


@pytest.mark.parametrize(
    'body,message',
    [
        (
            DEFAULTS + '    config.train.lerning_rate = 0.001\n    return config\n',
            'sets config.train.lerning_rate, which is not a config field; '
            'did you mean config.train.learning_rate?',
        ),
        (
            DEFAULTS + '    config.agument = ml_collections.ConfigDict({"flip": True})\n'
            '    return config\n',
            'sets config.agument.flip, which is not a config field; '
            'did you mean config.augment.flip?',
        ),
        (
            DEFAULTS + '    config.num_seeds = 4\n    return config\n',
            'sets config.num_seeds, which is not a config field; '
            'did you mean config.population_size?',
        ),
        (
            DEFAULTS + '    config.extra = ml_collections.ConfigDict()\n    return config\n',
            'sets config.extra, which is not a config field; '
            'config_schema.default_config() has every field.',
        ),
        (
            DEFAULTS + '    config.train.num_epochs = True\n    return config\n',
            'sets config.train.num_epochs=True; it must be an integer, as its default 5 is.',
        ),
        (
            DEFAULTS + '    config.train.learning_rate = None\n    return config\n',
            'sets config.train.learning_rate=None; it must be a number, as its default 0.05 is.',
        ),
        (
            DEFAULTS + '    config.model.use_bn = None\n    config.model.use_bn = "yes"\n'
            '    return config\n',
            "sets config.model.use_bn='yes'; it must be True or False, as its default False is.",
        ),
        (
            'def get_config():\n    plain = config_schema.default_config().to_dict()\n'
            '    plain["model"]["dense_features"] = 64\n'
            '    return ml_collections.ConfigDict(plain)\n',
            'sets config.model.dense_features=64; it must be a tuple, as its default '
            '(4096, 4096) is.',
        ),
        (
            'def get_config():\n    plain = config_schema.default_config().to_dict()\n'
            '    del plain["eval"]\n    return ml_collections.ConfigDict(plain)\n',
            'has no config.eval.tta; start from config_schema.default_config()',
        ),
        (
            'def get_config():\n    return config_schema.default_config().to_dict()\n',
            'get_config() returned a dict, not a ConfigDict',
        ),
        (
            'def get_config():\n    config_schema.default_config()\n',
            'get_config() returned None, not a ConfigDict',
        ),
        ('CONFIG = None\n', 'has no get_config()'),
        (
            'def get_config(name):\n    return config_schema.default_config()\n',
            "does not load: get_config() missing 1 required positional argument: 'name'",
        ),
        (
            'def get_config():\n    raise ValueError("no such recipe")\n',
            'does not load: no such recipe',
        ),
        ('def get_config(:\n', 'does not load: invalid syntax'),
    ],
    ids=[
        'misspelt_field',
        'misspelt_section',
        'former_name',
        'new_empty_section',
        'bool_for_int',
        'none_for_float',
        'str_for_bool',
        'int_for_tuple',
        'missing_section',
        'returns_dict',
        'returns_none',
        'no_get_config',
        'get_config_needs_an_argument',
        'get_config_raises_value_error',
        'syntax_error',
    ],
)
def test_load_config_names_the_file_and_the_field(body, message, tmp_path):
    path = tmp_path / 'mistake.py'
    path.write_text('import ml_collections\n\nfrom vgg_flax import config_schema\n\n' + body)
    with pytest.raises(errors.ConfigError) as error:
        config_utils.load_config(path)
    assert str(path) in str(error.value) and message in str(error.value), error.value
    assert '\n' not in str(error.value)


def test_load_config_names_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(errors.ConfigError, match='is a directory; pass the path'):
        config_utils.load_config(tmp_path)
    with pytest.raises(errors.ConfigError, match='does not exist; pass the path'):
        config_utils.load_config(tmp_path / 'missing.py')


def test_a_variant_names_the_experiment_it_starts_from_where_that_one_misspells(tmp_path):
    (tmp_path / 'base.py').write_text(
        'from vgg_flax import config_schema\n\n\ndef get_config():\n'
        '    config = config_schema.default_config()\n    config.train.nun_epochs = 3\n'
        '    return config\n'
    )
    (tmp_path / 'variant.py').write_text(
        'from vgg_flax import config_utils\n\n\ndef get_config():\n'
        "    return config_utils.experiment_config(__file__, 'base')\n"
    )
    with pytest.raises(errors.ConfigError) as error:
        config_utils.load_config(tmp_path / 'variant.py')
    assert str(error.value).startswith(f'{tmp_path / "base.py"} sets config.train.nun_epochs')


def test_load_config_gives_each_field_its_defaults_type(tmp_path):
    """An int where a number is due, and lists where a tuple is due, are what they mean."""
    path = tmp_path / 'plain.py'
    path.write_text(
        'import ml_collections\n\nfrom vgg_flax import config_schema\n\n\ndef get_config():\n'
        '    plain = config_schema.default_config().to_dict()\n'
        '    plain["train"]["learning_rate"] = 1\n'
        '    plain["model"]["dense_features"] = [64, 64]\n'
        '    plain["model"]["conv_arch"] = [[1, 64], (1, 128)]\n'
        '    return ml_collections.ConfigDict(plain)\n'
    )
    config = config_utils.load_config(path)
    assert type(config.train.learning_rate) is float and config.train.learning_rate == 1.0
    assert config.model.dense_features == (64, 64)
    assert config.model.conv_arch == ((1, 64), (1, 128))
    expected = config_schema.default_config()
    expected.train.learning_rate = 1.0
    expected.model.dense_features, expected.model.conv_arch = (64, 64), ((1, 64), (1, 128))
    assert config.to_dict() == expected.to_dict()
