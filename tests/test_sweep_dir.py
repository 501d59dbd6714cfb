"""A sweep's workdir: each point's directory one path component inside it, and its record."""

from __future__ import annotations

import json
import os

import pytest

from vgg_flax import errors, hyper, sweep, sweep_dir

from conftest import tiny_config


def test_names_that_are_one_path_component_name_their_directory_as_they_are():
    for name in (
        'model.width_ratio=16,seed=0',
        'model.width_ratio=8,seeds=0-2',
        'bn,seed=2',
        'model.dense_features=64-32',
        'lr=5%',
        'data.idx_dir=..',
        '7-test-time-flips',
        'x' * 255,
    ):
        assert sweep_dir.directory_name(name) == name


def test_other_names_are_escaped_into_one_component_each_of_its_own(tmp_path):
    names = [
        'data.idx_dir=../../../X',
        'data.idx_dir=/abs/path',
        '.',
        '..',
        '',
        'a\nb',
        'a\0b',
        'tab\there',
        'x' * 256,
        'é' * 200,  # 400 bytes.
        'results.md',
        'Results.MD',
        'summary.csv',
        'sweep.png',
        'sweep.json',
        '\udcff',  # A lone surrogate, as os.listdir gives undecodable bytes.
    ]
    directories = [sweep_dir.directory_name(name) for name in names]
    assert len({directory.casefold() for directory in directories}) == len(names)
    for name, directory in zip(names, directories, strict=True):
        assert sweep_dir.is_component(directory), (name, directory)
        assert directory != name and '/' not in directory and '\0' not in directory
        assert len(directory.encode()) <= 255
        path = tmp_path / directory
        path.mkdir()
        assert path.parent == tmp_path
    assert directories[0].startswith('data.idx_dir=..%2F..%2F..%2FX~')


def test_a_swept_path_trains_inside_the_workdir_and_a_linked_point_directory_is_refused(tmp_path):
    workdir = tmp_path / 'sweep'
    base = tiny_config()
    runs = sweep.plan(base, hyper.axis('data.idx_dir', ['../../../X', '/etc']), str(workdir))
    for run in runs:
        assert os.path.dirname(run.workdir) == str(workdir)
        assert run.config.data.idx_dir in ('../../../X', '/etc')
    workdir.mkdir()
    (tmp_path / 'elsewhere').mkdir()
    (workdir / 'seed=1').symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(ValueError, match=r'seed=1 is a link to .*elsewhere, while a sweep keeps'):
        sweep.plan(base, hyper.axis('seed', [0, 1]), str(workdir))


def test_points_that_would_share_a_directory_are_refused(tmp_path):
    base = tiny_config()
    with pytest.raises(ValueError, match=r'points 0 \(data.idx_dir=A\) and 1 \(data.idx_dir=a\)'):
        sweep.plan(base, hyper.axis('data.idx_dir', ['A', 'a']), str(tmp_path))
    with pytest.raises(ValueError, match='the sweep repeats a point'):
        sweep.plan(base, [{'seed': 1}, {'seed': 1}], str(tmp_path))
    # A named point and a population of the same name.
    points = [hyper.named('x,seeds=0-1', {}), *hyper.axis('seed', [0, 1])]
    points[1:] = [hyper.named('x', point) for point in points[1:]]
    with pytest.raises(ValueError, match='would share the directory'):
        sweep.plan(base, points, str(tmp_path), population=True)
    runs = sweep.plan(base, points[1:], str(tmp_path), population=True)  # Members share one.
    assert runs[0].workdir == runs[1].workdir == str(tmp_path / 'x,seeds=0-1')


def test_a_record_round_trips_and_a_damaged_one_is_named_with_its_fix(tmp_path):
    base = tiny_config()
    definition = sweep_dir.Definition(
        '/experiments/x.py',
        ['--config.train.momentum=0.9'],
        2,
        True,
        base,
        sweep.with_seeds(hyper.axis('model.dense_features', [(64, 64), (32,)]), 0, 2),
    )
    sweep_dir.write(str(tmp_path), definition)
    read = sweep_dir.read(str(tmp_path))
    assert read is not None and read.points == definition.points  # Tuples again, not lists.
    assert read.base == base and sweep_dir.differences(definition, read) == []
    assert read.command() == (
        '--config=/experiments/x.py --config.train.momentum=0.9 --seeds=2 --population'
    )
    path = tmp_path / sweep_dir.SWEEP_FILE
    plain = json.loads(path.read_text())
    for damaged in (
        '{',
        '[1]',
        json.dumps({**plain, 'seeds': 0}),
        json.dumps({**plain, 'points': [1]}),
        json.dumps({**plain, 'base': {'model': {'width_ratio': 'x'}}}),
    ):
        path.write_text(damaged)
        with pytest.raises(errors.RunDirError, match=r'sweep.json (is damaged|does not).*; del'):
            sweep_dir.read(str(tmp_path))
    assert sweep_dir.read(str(tmp_path / 'new')) is None


def test_differences_name_what_differs_beyond_what_a_resume_may_change():
    base = tiny_config()
    points = hyper.axis('model.width_ratio', [8, 16])

    def definition(base=base, points=points, seeds=1, population=False):
        return sweep_dir.Definition('x.py', [], seeds, population, base, points)

    longer, other_lr = base.copy_and_resolve_references(), base.copy_and_resolve_references()
    longer.train.num_epochs, longer.data.idx_dir = 9, '/moved'
    other_lr.train.learning_rate = 0.1
    assert sweep_dir.differences(definition(), definition(base=longer)) == []
    assert sweep_dir.differences(definition(), definition(base=other_lr)) == [
        'train.learning_rate: 0.05 in the run, 0.1 now'
    ]
    assert sweep_dir.differences(definition(), definition(seeds=2, population=True)) == [
        '--seeds: 1 in the run, 2 now',
        '--population: off in the run, on now',
    ]
    more = hyper.axis('model.width_ratio', [8, 16, 4, 2, 1, 32])
    assert sweep_dir.differences(definition(), definition(points=more)) == [
        'its points: 4 new (model.width_ratio=4, model.width_ratio=2, model.width_ratio=1 '
        'and 1 more)'
    ]
    assert sweep_dir.differences(definition(), definition(points=points[::-1])) == [
        "point 0: {'model.width_ratio': 8} in the run, {'model.width_ratio': 16} now"
    ]
