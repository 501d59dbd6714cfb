"""A population (`config.population_size` > 1): N models as one vmapped step, each member a
single run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vgg_flax import (
    checkpointing,
    device_data,
    distributed,
    evaluate,
    input_pipeline,
    metric_writers,
    population,
    train,
    train_state,
    train_steps,
)

from conftest import ROOT, logged_past, tiny_config, write_fashion_idx_dir


def test_member_i_has_the_keys_of_seed_plus_i():
    config = tiny_config()
    config.seed, config.population_size = 5, 3
    stacked = population.run_keys(config)
    config.population_size = 1
    for member in range(3):
        config.seed = 5 + member
        for keys, single in zip(stacked, population.run_keys(config), strict=True):
            np.testing.assert_array_equal(
                jax.random.key_data(keys[member]), jax.random.key_data(single)
            )


def test_per_member_maps_over_the_members_and_leaves_a_single_model_as_it_is():
    def fn(x, y):
        return x * y

    assert population.per_member(fn, 1) is fn
    mapped = population.per_member(fn, 3, in_axes=(0, None))
    np.testing.assert_array_equal(mapped(jnp.arange(3.0), 2.0), [0.0, 2.0, 4.0])


def first_losses(config, num_steps=3):
    """The train loss of each of the first steps (per member, for a population)."""
    mesh = distributed.create_mesh()
    init_key, dropout_key, shuffle_key = population.run_keys(config)
    data, _ = device_data.load_data(config, mesh, dropout_key)
    data = data.replace(
        batches=device_data.batch_maker(config, mesh)(
            shuffle_key, 1, data.images.shape[0], config.train.batch_size
        )
    )
    state = train_state.create_train_state(config, init_key, data.batches.shape[-2], mesh=mesh)
    step = train_steps.lower_train_step(state, data, train_steps.step_options(config)).compile()
    losses = []
    for _ in range(num_steps):
        state = step(state.replace(sums=train_state.zero_sums_like(state)), data)
        losses.append(train_state.mean_metrics(state.sums)[0])
    return np.array(losses)


@pytest.mark.slow
def test_each_member_steps_as_a_single_run_with_its_seed(idx_dir):
    config = tiny_config(str(idx_dir))
    config.seed, config.population_size = 5, 3
    members = first_losses(config)
    assert members.shape == (3, 3)
    config.population_size = 1
    for member in range(3):
        config.seed = 5 + member
        np.testing.assert_allclose(members[:, member], first_losses(config), rtol=1e-5)
    assert len({round(float(loss), 4) for loss in members[0]}) == 3  # Three models.


@pytest.mark.slow
def test_a_population_run_reports_each_member_and_their_mean(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.population_size = 2
    results = train.train_and_evaluate(config, str(tmp_path / 'population'))
    config.population_size = 1
    singles = []
    for seed in (0, 1):
        config.seed = seed
        singles.append(train.train_and_evaluate(config, str(tmp_path / f'seed{seed}')))

    for member, single in zip(
        results['members'], singles, strict=True
    ):  # After 20 steps, to float noise.
        assert member['test_accuracy'] == pytest.approx(single['test_accuracy'], abs=0.015)
        assert member['train_loss'] == pytest.approx(single['train_loss'], rel=1e-3)
    accuracies = [member['test_accuracy'] for member in results['members']]
    assert results['test_accuracy'] == pytest.approx(np.mean(accuracies))
    assert results['test_accuracy_std'] == pytest.approx(np.std(accuracies, ddof=1))
    assert results['num_params'] == singles[0]['num_params']

    history = metric_writers.read_history(str(tmp_path / 'population'))
    for record in history:
        assert len(record['members']) == 2
        for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy'):
            assert record[key] == pytest.approx(np.mean([m[key] for m in record['members']]))
    steps = metric_writers.read_steps(str(tmp_path / 'population'))
    assert steps and all(len(record['members']) == 2 for record in steps)
    events = event_accumulator.EventAccumulator(str(tmp_path / 'population' / 'tensorboard'))
    events.Reload()
    for tag in (
        'test_accuracy',
        'members/0/test_accuracy',
        'members/1/test_accuracy',
        'steps/members/1/train_loss',
    ):
        assert tag in events.Tags()['scalars']
    assert [e.value for e in events.Scalars('members/1/test_accuracy')] == pytest.approx(
        [record['members'][1]['test_accuracy'] for record in history]
    )

    evaluation = evaluate.evaluate_run(str(tmp_path / 'population'))  # Members and ensemble.
    assert evaluation['members_test_accuracy'] == [m['test_accuracy'] for m in results['members']]
    config.seed, config.population_size = 0, 2
    state, _ = checkpointing.restore_state(config, str(tmp_path / 'population'))
    split = input_pipeline.load_split(config.data, 'test', config.model.num_classes)
    images, indices = jnp.asarray(split.images), jnp.arange(len(split))
    logits = [
        train_steps.predict_step(
            jax.tree.map(lambda x, i=i: x[i] if x.ndim else x, state),
            images,
            indices,
            image_size=32,
        )
        for i in range(2)
    ]
    ensemble = np.mean(np.argmax((logits[0] + logits[1]) / 2, -1) == split.labels)
    assert evaluation['test_accuracy'] == pytest.approx(ensemble)


@pytest.mark.slow
def test_a_population_killed_mid_epoch_resumes_exactly(tmp_path):
    """kill -9 in the second epoch, then the same command: the members' metrics equal those of
    an uninterrupted run (both run as the CLI, whose CPU tuning flags change the last digits)."""
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx', num_train=800)
    overrides = [
        f'--config.{key}={value}'
        for key, value in (  # tiny_config's fields.
            ('population_size', 4),
            ('model.width_ratio', 16),
            ('model.use_bn', True),
            ('model.dense_features', '(64,64)'),
            ('model.dropout_rate', 0.1),
            ('data.source', 'idx'),
            ('data.idx_dir', idx_dir),
            ('data.image_size', 32),
            ('train.batch_size', 32),
            ('train.eval_batch_size', 48),
            ('train.num_epochs', 2),
            ('train.momentum', 0.9),
            ('train.learning_rate', 0.05),
            ('train.log_every_steps', 5),
        )
    ]

    def start(workdir):
        return subprocess.Popen(
            [
                sys.executable,
                '-m',
                'vgg_flax.main',
                f'--workdir={workdir}',
                f'--config={ROOT / "experiments" / "d2l_vgg11.py"}',
                *overrides,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def members(workdir):
        return [record['members'] for record in metric_writers.read_history(str(workdir))]

    straight = start(tmp_path / 'straight')
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    workdir = tmp_path / 'killed'
    process, deadline = start(workdir), time.time() + 600
    while not ((workdir / 'checkpoints' / '25').is_dir() and logged_past(workdir, 25)):
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # Mid-epoch 2 (of 25 steps each), after epoch 1's save.
    process.wait()
    assert not (workdir / 'results.json').exists()
    assert len(members(workdir)) == 1
    resumed = start(workdir)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert len(members(workdir)) == 2 and len(members(workdir)[0]) == 4
    assert members(workdir) == members(tmp_path / 'straight')
    results = [
        json.loads((path / 'results.json').read_text()) for path in (workdir, tmp_path / 'straight')
    ]
    assert results[0]['members'] == results[1]['members']


SPREAD_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from conftest import tiny_config
from vgg_flax import device_data, distributed, population, train, train_state, train_steps
config = tiny_config({idx_dir!r})
config.population_size, config.members_over_devices, config.train.num_epochs = 4, {spread}, 1
mesh = distributed.create_mesh()
init_key, dropout_key, _ = population.run_keys(config)
data, _ = device_data.load_data(config, mesh, dropout_key)
state = train_state.create_train_state(config, init_key, data.batches.shape[-2],
                                       data.images.shape[-1], mesh)  # As the run's.
options = train_steps.step_options(config)
compiled = train_steps.lower_train_step(state, data, options).compile().as_text()
results = train.train_and_evaluate(config, {workdir!r})
print(json.dumps({{'devices': jax.device_count(), 'all_reduce': 'all-reduce' in compiled,
                  'members_per_device': jax.tree.leaves(state.params)[0]
                  .addressable_shards[0].data.shape[0], 'members': results['members']}}))
"""


@pytest.mark.slow
def test_members_over_four_devices_train_without_an_all_reduce(idx_dir, tmp_path):
    """Each of 4 CPU devices trains one whole member: no gradient all-reduce, and the members'
    metrics are those of the same population with every batch split over the devices."""
    runs = {}
    for spread in (True, False):
        done = subprocess.run(
            [
                sys.executable,
                '-c',
                SPREAD_SCRIPT.format(
                    tests=str(ROOT / 'tests'),
                    idx_dir=str(idx_dir),
                    spread=spread,
                    workdir=str(tmp_path / f'spread={spread}'),
                ),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4'),
        )
        assert done.returncode == 0, done.stderr
        runs[spread] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs[True]['devices'] == 4 and runs[True]['members_per_device'] == 1
    assert not runs[True]['all_reduce'] and runs[False]['all_reduce']
    assert runs[False]['members_per_device'] == 4
    for spread, split in zip(runs[True]['members'], runs[False]['members'], strict=True):
        assert spread['train_loss'] == pytest.approx(split['train_loss'], rel=1e-4)
        assert spread['test_accuracy'] == pytest.approx(split['test_accuracy'], abs=0.02)
