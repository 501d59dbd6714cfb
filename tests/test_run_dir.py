"""The run directory's files: written whole or not at all, read back or refused in one line."""

from __future__ import annotations

import pytest

from vgg_flax import run_dir


def test_an_atomic_write_cut_short_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'results.json'
    run_dir.write_json_atomic(str(path), {'epochs': 1})
    with pytest.raises(RuntimeError), run_dir.atomic_write(str(path)) as f:
        f.write('{"epochs": 2')
        raise RuntimeError('killed mid-write')
    assert run_dir.read_json(str(path), 'unused') == {'epochs': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_a_damaged_json_file_is_one_line_naming_it_and_the_fix(tmp_path):
    path = tmp_path / 'config.json'
    path.write_bytes(b'{"model": ')
    with pytest.raises(run_dir.RunDirError, match=r'config\.json is damaged .*; do this\.$'):
        run_dir.read_json(str(path), 'do this.')


def test_a_directory_without_a_run_is_no_run_of_any_config(tmp_path):
    assert run_dir.finished_results(str(tmp_path), 5) is None
    assert run_dir.held_by(str(tmp_path)) is None
    assert run_dir.last_num_devices(str(tmp_path)) is None
