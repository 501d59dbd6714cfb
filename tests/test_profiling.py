"""The profile summary: a real trace of a compiled function, summed per op, and its CLI."""

from __future__ import annotations

import gzip
import json

import jax
import jax.numpy as jnp

from vgg_flax import profiling


def write_trace(path, events):
    with gzip.open(path, 'wt') as f:
        json.dump({'traceEvents': events}, f)


def op_event(op, ts, dur, kernel=None, pid=1):
    return {
        'ph': 'X',
        'pid': pid,
        'tid': 2,
        'ts': ts,
        'dur': dur,
        'name': kernel or op,
        'args': {'hlo_module': 'jit_step', 'hlo_op': op},
    }


def process(pid, name):
    return {'ph': 'M', 'pid': pid, 'name': 'process_name', 'args': {'name': name}}


def test_summary_sums_ops_and_counts_overlapping_time_once(tmp_path):
    trace = tmp_path / 'host.trace.json.gz'
    write_trace(
        trace,
        [
            op_event('convolution.1', 0, 10, kernel='sm90_xmma_fprop'),
            op_event('fusion.2', 5, 10),  # Overlaps the first (another stream): busy 0-15.
            {
                'ph': 'X',
                'pid': 1,
                'tid': 3,
                'ts': 0,
                'dur': 100,
                'name': 'PjitFunction(step)',
                'args': {},
            },  # Host time, not an op.
            op_event('convolution.1', 20, 30, kernel='sm90_xmma_fprop'),
            op_event('fusion.2', 60, 40),
        ],
    )
    summary = profiling.summarize_trace(profiling.latest_trace(str(tmp_path)), calls=2)
    assert summary == profiling.summarize_trace(str(trace), calls=2)
    assert [(op['op'], op['count'], op['total_us']) for op in summary['ops']] == [
        ('fusion.2', 2, 50),
        ('convolution.1', 2, 40),
    ]
    assert summary['ops'][1]['kernel'] == 'sm90_xmma_fprop'
    assert summary['busy_us'] == 85 and summary['span_us'] == 100  # Idle 15-20 and 50-60.
    text = profiling.format_summary(summary)
    assert 'device busy 85.0% of the 0.1 ms' in text and '0.043 ms busy per call' in text
    assert 'sm90_xmma_fprop' in text


def test_on_a_gpu_only_the_device_streams_count(tmp_path):
    trace = tmp_path / 'host.trace.json.gz'
    write_trace(
        trace,
        [
            process(1, '/host:CPU'),
            process(7, '/device:GPU:0'),
            op_event('fusion.2', 0, 3),  # The kernel's launch, on the host.
            op_event('fusion.2', 2, 10, kernel='loop_fusion', pid=7),
        ],
    )
    summary = profiling.summarize_trace(str(trace))
    assert [(op['kernel'], op['total_us']) for op in summary['ops']] == [('loop_fusion', 10)]
    assert summary['busy_us'] == summary['span_us'] == 10
    assert 'per call' not in profiling.format_summary(summary)


def test_a_real_trace_shows_every_call_of_each_op(tmp_path, run_cli):
    step = jax.jit(lambda x: jnp.tanh(x @ x) + 1)
    x = jnp.ones((64, 64))
    step(x).block_until_ready()
    trace = profiling.trace_calls(lambda: step(x), 3, str(tmp_path / 'profile'))
    summary = profiling.summarize_trace(trace, calls=3)
    assert summary['ops'] and all(op['count'] % 3 == 0 for op in summary['ops'])
    assert {op['module'] for op in summary['ops']} == {'jit__lambda'}
    assert 0 < summary['busy_us'] <= summary['span_us']

    done = run_cli(profiling, f'--trace={tmp_path / "profile"}', '--calls=3')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('profile: device busy') and '3 calls' in done.stdout
    done = run_cli(profiling, f'--trace={tmp_path / "nowhere"}')
    assert done.returncode == 1 and 'no *trace.json.gz under' in done.stderr
