"""The command line's own mistakes: each ends the CLI with status 1 and one line naming the fix."""

from __future__ import annotations

import types

import ml_collections
import pytest

from vgg_flax import cli, config_schema, main

from conftest import ROOT

QUICK = ROOT / 'experiments' / 'quick.py'


@pytest.mark.parametrize(
    'make_args,message',
    [
        (
            lambda tmp: [f'--config={QUICK}', '--config.train.lerning_rate=0.1'],
            '--config.train.lerning_rate: the config has no such field; '
            'did you mean --config.train.learning_rate?',
        ),
        (
            lambda tmp: [f'--config={QUICK}', '--config.modle.width_ratio=2'],
            'did you mean --config.model.width_ratio?',
        ),
        (
            lambda tmp: [f'--config={QUICK}', '--config.num_seeds=4'],
            '--config.num_seeds: the config has no such field; '
            'did you mean --config.population_size?',
        ),
        (
            lambda tmp: [f'--config={tmp / "missing.py"}'],
            'missing.py does not exist; pass the path of an experiment config',
        ),
        (lambda tmp: [f'--config={tmp / "broken.py"}'], 'broken.py does not load: invalid syntax'),
        (
            lambda tmp: [f'--config={tmp / "raises.py"}'],
            'raises.py does not load: division by zero',
        ),
        (
            lambda tmp: [f'--config={QUICK}', '--config.train.num_epochs=abc'],
            "invalid literal for int() with base 10: 'abc'",
        ),
        (
            lambda tmp: [f'--config={tmp / "misspelt.py"}'],
            'misspelt.py sets config.train.lerning_rate, which is not a config field; '
            'did you mean config.train.learning_rate?',
        ),
        (
            lambda tmp: [f'--config={tmp / "returns_dict.py"}'],
            'returns_dict.py: get_config() returned a dict, not a ConfigDict',
        ),
        (lambda tmp: [f'--config={tmp}'], 'is a directory; pass the path of an experiment config'),
        (
            lambda tmp: [f'--config={QUICK}', '--config.model.conv_arch=((1,64),(1,128)'],
            "flag --config.model.conv_arch=((1,64),(1,128): '((1,64),(1,128)' is not a tuple",
        ),
    ],
    ids=[
        'misspelt_field',
        'misspelt_group',
        'former_name',
        'missing_file',
        'syntax_error',
        'raising_file',
        'bad_value',
        'misspelt_field_in_file',
        'file_returns_dict',
        'directory',
        'malformed_tuple',
    ],
)
def test_flag_mistakes_give_one_line(make_args, message, tmp_path, run_cli):
    (tmp_path / 'broken.py').write_text('def get_config(:\n')
    (tmp_path / 'raises.py').write_text('def get_config():\n    return 1 / 0\n')
    (tmp_path / 'misspelt.py').write_text(
        'from vgg_flax import config_schema\n\n\ndef get_config():\n'
        '    config = config_schema.default_config()\n'
        '    config.train.lerning_rate = 0.001\n'
        '    return config\n'
    )
    (tmp_path / 'returns_dict.py').write_text(
        'from vgg_flax import config_schema\n\n\ndef get_config():\n'
        '    return config_schema.default_config().to_dict()\n'
    )
    workdir = tmp_path / 'run'
    done = run_cli(main, *make_args(tmp_path), f'--workdir={workdir}')
    assert done.returncode == 1
    assert message in done.stderr
    assert 'Traceback' not in done.stderr and len(done.stderr.strip().splitlines()) <= 2, (
        done.stderr
    )
    assert not workdir.exists()


def parsed_config(run_cli, *args: str, path=QUICK) -> ml_collections.ConfigDict:
    """The config that the command line `--config=PATH ARGS` gives a CLI."""
    parse_only = types.ModuleType('parse_only')
    parse_only.main = lambda argv: 0  # type: ignore[attr-defined]
    done = run_cli(parse_only, f'--config={path}', *args)
    assert done.returncode == 0, done.stderr
    return cli.CONFIG.value


TUPLE_FIELDS = [
    field
    for field, value in config_schema.flatten(config_schema.default_config().to_dict()).items()
    if isinstance(value, tuple)
]
NESTED, FLAT = ((1, 64), (2, 128)), (3, 5)


@pytest.mark.parametrize(
    'values', [(NESTED, FLAT), (FLAT, NESTED)], ids=['flat_last', 'nested_last']
)
@pytest.mark.parametrize('field', TUPLE_FIELDS)
def test_a_tuple_field_given_twice_takes_the_last_value(field, values, run_cli):
    """As a script that appends an override to a command that has one: the last one wins, as
    for every other field, and the two are not joined into one tuple."""
    first, last = (str(value).replace(' ', '') for value in values)
    config = parsed_config(run_cli, f'--config.{field}={first}', f'--config.{field}={last}')
    assert config_schema.flatten(config.to_dict())[field] == values[1]


def test_tuple_fields_cover_the_nested_and_empty_defaults():
    assert {'model.conv_arch', 'model.dense_features', 'train.lr_decay_epochs'} <= set(TUPLE_FIELDS)


def test_a_tuple_override_written_as_lists_gives_tuples(run_cli):
    config = parsed_config(run_cli, '--config.model.conv_arch=[[1,64],[2,128]]')
    assert config.model.conv_arch == ((1, 64), (2, 128))


def test_overrides_apply_to_a_file_whose_types_the_defaults_gave(tmp_path, run_cli):
    """A config file's int where a number is due, or list where a tuple is, has the default's
    type before any override: ml_collections parses an override by the type the field holds
    (an int field refuses 0.5, a list field every override)."""
    path = tmp_path / 'plain.py'
    path.write_text(
        'import ml_collections\n\nfrom vgg_flax import config_schema\n\n\ndef get_config():\n'
        '    plain = config_schema.default_config().to_dict()\n'
        '    plain["train"]["learning_rate"] = 1\n'
        '    plain["model"]["dense_features"] = [64, 64]\n'
        '    return ml_collections.ConfigDict(plain)\n'
    )
    config = parsed_config(
        run_cli,
        '--config.train.learning_rate=0.5',
        '--config.model.dense_features=(32,32)',
        path=path,
    )
    assert config.train.learning_rate == 0.5 and config.model.dense_features == (32, 32)
