"""The benchmark measures the step and the loop and reports every number it promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vgg_flax import benchmark

from conftest import ROOT, tiny_config


@pytest.mark.slow
def test_benchmark_reports_step_loop_eval_compile_and_mfu_inputs():
    config = tiny_config('unused: random data')
    config.train.steps_per_call = 2
    result = benchmark.run(config, 'random', steps=3, repeats=2, warmup=1, loop_steps=3)
    step, loop = result['step'], result['loop']
    assert (
        0
        < step['images_per_sec']['min']
        <= step['images_per_sec']['median']
        <= (step['images_per_sec']['max'])
    )
    compiled_loop = step['compiled_loop']
    assert compiled_loop['steps_per_call'] == 2 and compiled_loop['compile_seconds'] > 0
    assert 0 < compiled_loop['images_per_sec']['min'] <= compiled_loop['images_per_sec']['max']
    assert step['compile_seconds'] > 0 and step['flops_per_step'] > 0
    assert loop['images_per_sec'] > 0 and loop['eval_images_per_sec'] > 0
    assert loop['epoch_images'] == 3 * config.train.batch_size
    assert result['loop_vs_step'] > 0
    assert result['mfu'] is None  # No peak is known for a CPU...
    assert benchmark.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12  # ...for this.
    text = benchmark.format_result(result)
    assert 'train step alone' in text and 'training loop' in text and 'peak table' in text
    assert '2 steps per call' in text
    json.dumps(result)  # The record is JSON-ready.


@pytest.mark.slow
def test_benchmark_cli_writes_json_and_compiles_afresh(tmp_path):
    output, cache = tmp_path / 'result.json', tmp_path / 'xla_cache'
    # As benchmarks/gpu_session.sh runs it: with a cache that its training runs fill.
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
    done = subprocess.run(
        [
            sys.executable,
            '-m',
            'vgg_flax.benchmark',
            '--config=experiments/quick.py',
            '--config.model.width_ratio=16',
            '--config.model.dense_features=(64,64)',
            '--config.train.batch_size=32',
            '--steps=2',
            '--repeats=2',
            '--loop_steps=0',
            f'--output={output}',
            f'--profile_dir={tmp_path / "profile"}',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert 'train step alone' in done.stdout and 'training loop' not in done.stdout
    assert f'({benchmark.PROFILE_CALLS} calls:' in done.stdout  # The profile's summary.
    record = json.loads(output.read_text())
    profile = record['step']['profile']
    assert profile['calls'] == benchmark.PROFILE_CALLS and profile['busy_us'] > 0
    assert any(op['op'].startswith('conv') for op in profile['ops'])
    assert profile['trace'].startswith(str(tmp_path / 'profile'))
    assert record['loop'] is None and record['config']['width_ratio'] == 16
    assert record['step']['compiled_loop'] is None  # Only with steps_per_call above 1.
    assert record['environment']['packages']['jax']
    assert not cache.exists() or not any(cache.iterdir())  # It timed real compiles.


SMOKE_SWEEP = """
from vgg_flax import config_schema, hyper

def get_config():
    return config_schema.default_config()

def get_sweep():  # Seeds as the GPU sweep has them, which it trains as populations.
    return hyper.product(hyper.axis('model.width_ratio', [8, 16]), hyper.axis('seed', range(2)))
"""


@pytest.mark.slow
def test_every_gpu_session_stage_runs_on_a_cpu(idx_dir, tmp_path):
    """benchmarks/gpu_session.sh, every stage, at tiny sizes on this CPU (this Python first on
    PATH: the script calls python3), so that no stage fails for the first time on a GPU: each
    stage's summary line is there, and none failed or was skipped for time."""
    (tmp_path / 'smoke_sweep.py').write_text(SMOKE_SWEEP)
    out = tmp_path / 'out'
    env = dict(
        os.environ,
        DATA_DIR=str(idx_dir),
        OUT=str(out),
        BUDGET_SECONDS='100000',
        EXTRA_FLAGS='--config.model.width_ratio=16 --config.train.batch_size=16 '
        '--config.model.dense_features=(32,32) --config.train.num_epochs=1 '
        '--config.data.max_train_examples=64 --config.data.max_test_examples=64 '
        '--config.data.image_size=32',
        BENCH_FLAGS='--steps=2 --repeats=1 --warmup=1 --loop_steps=0',
        PEER_FLAGS='--device=cpu --steps=1 --repeats=1 --warmup=1 --variants=eager',
        SWEEP_CONFIG=str(tmp_path / 'smoke_sweep.py'),
        PATH=f'{os.path.dirname(sys.executable)}{os.pathsep}{os.environ["PATH"]}',
    )
    done = subprocess.run(
        ['bash', 'benchmarks/gpu_session.sh'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr
    summary = (out / 'summary.txt').read_text()
    assert 'FAILED' not in summary and 'not started' not in summary, summary
    for name in (
        'bfloat16',
        'native_28px',
        'bfloat16_lax_first_conv',
        'quick_seed',
        'quick_population_8',
        'native_28px_population_8',
        'float32',
        'bfloat16_batch512',
    ):
        assert f'benchmark {name}: first conv' in summary, name
    assert re.search(r'benchmark bfloat16_profile: .* profile: busy \d+%', summary)
    assert re.search(r'benchmark quick_16_per_call: .* 16 steps per call [\d,]+ img/s', summary)
    for name in ('bfloat16', 'relaunch', 'float32', 'deterministic1', 'deterministic2'):
        assert f'train {name}: 1 epochs, test acc ' in summary, name
    for line in (
        'target (H100/H200, bfloat16): >= 40,000 train img/s: ',
        'time_to_95: 3 seeds, training seconds to 0.95 test acc [None, None, None], mean n/a',
        'relaunch vs first launch (warm cache): epoch 1 bitwise equal: True',
        '--xla_gpu_deterministic_ops, two launches: epoch 1 bitwise equal: True',
        'best_224: 3 seeds, test acc [',
        '| model.width_ratio | runs | done |',
    ):
        assert line in summary, line
    # The sweep trained each ratio's seeds as one population, and reported all four runs.
    for ratio in (8, 16):
        assert f'model.width_ratio={ratio},seeds=0-1' in done.stdout, ratio
    assert summary.count(' | done | ') >= 4
    for config in ('quick', 'native_28px'):
        assert re.search(
            rf'population {config}: 8 members [\d,]+ img/s, one seed [\d,]+: ', summary
        )
    try:
        import torch  # noqa: F401
    except ImportError:
        assert 'peer: not run: this python has no torch' in summary
    else:
        for name in ('bfloat16', 'native_28px'):
            assert f'peer {name}: PyTorch' in summary, name


def _torch_reference():
    pytest.importorskip(
        'torch', reason='PyTorch is not installed: pip install -r benchmarks/requirements.txt'
    )
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import torch_reference
    finally:
        sys.path.pop(0)
    return torch_reference


def test_torch_peer_augments_as_the_step_does():
    """Each image of the peer's batch is its own image shifted by at most `translate` pixels
    (the border black), or that mirrored: the peer does the step's work, not less."""
    torch_reference = _torch_reference()
    import torch

    torch.manual_seed(0)
    x = torch.rand(8, 1, 6, 6) + 1
    assert torch.equal(torch_reference.augment(x, 0, False), x)
    out = torch_reference.augment(x, 2, True)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for image, original in zip(out, padded, strict=True):
        crops = [original[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(image, c) or torch.equal(image, c.flip(-1)) for c in crops)


@pytest.mark.slow
def test_cpu_peer_runs_both_steps_and_reports_the_ratio(tmp_path):
    _torch_reference()
    output = tmp_path / 'peer.json'
    done = subprocess.run(
        [sys.executable, 'benchmarks/cpu_peer.py', '--configs=quick', '--rounds=1', '--steps=1',
         '--repeats=1', '--warmup=1', '--variants=eager,eager_channels_last', f'--output={output}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r'quick \(batch config\): ours [\d,.]+ .* ratio [\d.]+x', done.stdout)
    summary = json.loads(output.read_text())['summary']['quick']
    assert set(summary['medians']) == {'ours', 'eager', 'eager_channels_last'}
    assert summary['ours_over_best'] > 0
    wrong = subprocess.run(
        [sys.executable, 'benchmarks/cpu_peer.py', '--configs=quik'],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 2 and 'no experiments/quik.py' in wrong.stderr


@pytest.mark.slow
def test_cpu_ops_times_every_convolution_of_a_config():
    _torch_reference()
    done = subprocess.run(
        [sys.executable, 'benchmarks/cpu_ops.py', '--config=experiments/quick.py',
         '--batch_size=2'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r'\s*\d+px', line)]
    assert len(rows) == 8  # VGG-11's eight convolutions.
    assert 'all convolutions, forward and backward: XLA' in done.stdout


@pytest.mark.parametrize(
    'script', ['cpu_peer.py --configs=quick', 'cpu_ops.py --config=experiments/quick.py']
)
def test_the_pytorch_benchmarks_say_in_one_line_where_pytorch_is_missing(script, tmp_path):
    """Before any timing, whether or not this Python has torch: a `torch` that fails to import
    stands first on the path."""
    (tmp_path / 'torch').mkdir()
    (tmp_path / 'torch' / '__init__.py').write_text("raise ImportError('no torch here')\n")
    name, *flags = script.split()
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    done = subprocess.run(
        [sys.executable, f'benchmarks/{name}', *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    assert done.stderr.strip() == (
        'PyTorch is not installed in this Python: pip install -r benchmarks/requirements.txt'
    )
