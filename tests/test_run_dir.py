"""The run directory's files: written whole or not at all, read back or refused in one line."""

from __future__ import annotations

import os
import resource

import pytest

from vgg_flax import config_schema, errors, run_dir


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
    with pytest.raises(errors.RunDirError, match=r'config\.json is damaged .*; do this\.$'):
        run_dir.read_json(str(path), 'do this.')


def test_a_directory_without_a_run_is_no_run_of_any_config(tmp_path):
    assert run_dir.finished_results(str(tmp_path), 5) is None
    assert run_dir.held_by(str(tmp_path)) is None
    assert run_dir.last_num_devices(str(tmp_path)) is None


@pytest.mark.parametrize('kind', ['symlink', 'hard link', 'foreign file', 'directory', 'fifo'])
def test_a_lock_that_is_not_a_runs_own_is_refused_and_left_as_it_is(tmp_path, kind):
    workdir, elsewhere = tmp_path / 'run', tmp_path / 'notes.txt'
    workdir.mkdir()
    elsewhere.write_text('a file of the user\n')
    lock = workdir / run_dir.LOCK_FILE
    if kind == 'symlink':
        lock.symlink_to(elsewhere)
    elif kind == 'hard link':
        os.link(elsewhere, lock)
    elif kind == 'foreign file':
        lock.write_text('a file of the user\n')
    elif kind == 'directory':
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(errors.RunDirError) as error, run_dir.hold_workdir(str(workdir)):
        pass
    assert str(error.value).startswith(f'{lock} is ') and '\n' not in str(error.value)
    assert str(error.value).endswith('; move it elsewhere: a run keeps its lock there.')
    assert elsewhere.read_text() == 'a file of the user\n'
    assert run_dir.held_by(str(workdir)) is None


def test_a_workdir_that_links_to_nothing_says_so(tmp_path):
    workdir = tmp_path / 'run'
    workdir.symlink_to(tmp_path / 'scratch' / 'run')
    with pytest.raises(errors.RunDirError) as error, run_dir.hold_workdir(str(workdir)):
        pass
    assert str(error.value) == (
        f'--workdir={workdir} is a symbolic link to {tmp_path / "scratch" / "run"}, which does '
        'not exist; create that directory (or mount its disk), or pass another --workdir.'
    )


def test_a_lock_that_cannot_be_written_is_one_line(tmp_path):
    """A file-size limit fails the write of the lock as a full disk does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        with pytest.raises(errors.RunDirError) as error, run_dir.hold_workdir(str(tmp_path)):
            pass
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(error.value) == (
        f'cannot write to --workdir={tmp_path} (File too large); pass a directory you can write to.'
    )
    with run_dir.hold_workdir(str(tmp_path)):  # The next run finds the lock as it was: empty.
        assert run_dir.held_by(str(tmp_path)) is not None


@pytest.mark.parametrize(
    'name, text, message',
    [
        (run_dir.DATA_FILE, '[]', 'data.json holds a JSON list, not an object; delete it'),
        (
            run_dir.DATA_FILE,
            '{"train": {"checksum": "x", "examples": 1}}',
            'data.json does not hold the fingerprints of the splits test, train as a run records '
            'them; delete it',
        ),
        (
            run_dir.DATA_FILE,
            '{"train": 1, "test": 2}',
            'data.json does not hold the fingerprints of the splits',
        ),
        (run_dir.RESULTS_FILE, '"done"', 'results.json holds a JSON str, not an object; the run'),
    ],
)
def test_a_run_file_of_valid_json_but_the_wrong_shape_is_one_line_naming_it(
    tmp_path, name, text, message
):
    (tmp_path / name).write_text(text)
    fingerprints = {split: {'checksum': 'x', 'examples': 1} for split in ('train', 'test')}
    with pytest.raises(errors.RunDirError) as error:
        run_dir.check_data(str(tmp_path), fingerprints)
        run_dir.finished_results(str(tmp_path), 1)
    assert message in str(error.value) and '\n' not in str(error.value)


def test_a_config_json_with_a_former_field_name_reads_as_the_run_it_was(tmp_path):
    """A run written when `population_size` was `num_seeds` resumes under the current name."""
    config = config_schema.default_config()
    config.population_size = 3
    plain = config_schema.to_plain(config)
    plain['num_seeds'] = plain.pop('population_size')
    run_dir.write_json_atomic(str(tmp_path / run_dir.CONFIG_FILE), plain)
    read = run_dir.read_config(str(tmp_path))
    assert read.to_dict() == config.to_dict()
    assert run_dir.check_workdir(str(tmp_path), config)  # A resume, nothing refused.
