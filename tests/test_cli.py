"""The command line's own mistakes: each ends the CLI with status 1 and one line naming the fix."""

from __future__ import annotations

import pytest

from vgg_flax import main

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
    ],
    ids=[
        'misspelt_field',
        'misspelt_group',
        'missing_file',
        'syntax_error',
        'raising_file',
        'bad_value',
    ],
)
def test_flag_mistakes_give_one_line(make_args, message, tmp_path, run_cli):
    (tmp_path / 'broken.py').write_text('def get_config(:\n')
    (tmp_path / 'raises.py').write_text('def get_config():\n    return 1 / 0\n')
    workdir = tmp_path / 'run'
    done = run_cli(main, *make_args(tmp_path), f'--workdir={workdir}')
    assert done.returncode == 1
    assert message in done.stderr
    assert 'Traceback' not in done.stderr and len(done.stderr.strip().splitlines()) <= 2, (
        done.stderr
    )
    assert not workdir.exists()
