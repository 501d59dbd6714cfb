"""Where a compiled step's time goes: a profiler trace of a few calls, summed per XLA op.

`python -m vgg_flax.benchmark --profile_dir=DIR` traces the train step into DIR (TensorBoard's
profile plugin and Perfetto open the files) and prints this summary; this module's CLI prints it
again from the files, e.g. for a trace brought back from a GPU machine:

  python -m vgg_flax.profiling --trace=DIR [--calls=N] [--top=15]

The summary answers the first question about a slow step: is the device busy (then the table
of ops says which ones cost), or does it wait between ops and calls (dispatch, launches)?
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import sys
from collections.abc import Callable
from typing import Any, cast

import jax
from absl import app, flags

from vgg_flax import cli

_TRACE = cast(  # Required: a str once parsed.
    'flags.FlagHolder[str]',
    flags.DEFINE_string(
        'trace', None, 'A *trace.json.gz, or a directory holding one (the newest is read).'
    ),
)
_CALLS = flags.DEFINE_integer('calls', None, 'Calls traced, for times per call.')
_TOP = flags.DEFINE_integer('top', 15, 'Ops listed, most costly first.')


def trace_calls(call: Callable[[], Any], calls: int, logdir: str) -> str:
    """Traces `calls` back-to-back calls of `call`, waiting only for the last; returns the trace.

    Not waiting in between keeps JAX's asynchronous dispatch as the training loop has it, so
    gaps between the device's ops are those of training.
    """
    # The Perfetto file has the same JSON events, in case a jax writes no *.trace.json.gz.
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        for _ in range(calls):
            result = call()
        jax.block_until_ready(result)
    return latest_trace(logdir)


def latest_trace(path: str) -> str:
    """The newest `*trace.json.gz` under `path` (or `path` itself, if it is a file)."""
    if os.path.isfile(path):
        return path
    traces = glob.glob(os.path.join(path, '**', '*trace.json.gz'), recursive=True)
    if not traces:
        raise FileNotFoundError(
            f'no *trace.json.gz under {path}; capture one with '
            'python -m vgg_flax.benchmark --profile_dir=DIR.'
        )
    return max(traces, key=os.path.getmtime)


def _busy_microseconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time with at least one op running."""
    busy, reached = 0.0, float('-inf')
    for start, end in sorted(intervals):
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return busy


def summarize_trace(trace_path: str, calls: int | None = None) -> dict[str, Any]:
    """Device time per XLA op, and how much of the traced span the device was busy.

    Op events are those the profiler tags with an `hlo_op`: kernels on a GPU's streams (not
    their launches on the host, when a device's events exist), thunks on a CPU. The span runs
    from the first op's start to the last op's end. With `calls`, times are also given per call.
    """
    with gzip.open(trace_path, 'rt') as f:
        trace_events = json.load(f)['traceEvents']
    devices = {
        e['pid']
        for e in trace_events
        if e.get('ph') == 'M'
        and e.get('name') == 'process_name'
        and e.get('args', {}).get('name', '').startswith('/device:')
    }
    events = [e for e in trace_events if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {})]
    if any(e['pid'] in devices for e in events):
        events = [e for e in events if e['pid'] in devices]
    if not events:
        return {'trace': trace_path, 'ops': [], 'busy_us': 0.0, 'span_us': 0.0, 'calls': calls}
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        key = (e['args'].get('hlo_module', ''), e['args']['hlo_op'])
        op = ops.setdefault(
            key, {'module': key[0], 'op': key[1], 'kernel': e['name'], 'count': 0, 'total_us': 0.0}
        )
        op['count'] += 1
        op['total_us'] += e['dur']
    intervals = [(e['ts'], e['ts'] + e['dur']) for e in events]
    return {
        'trace': trace_path,
        'ops': sorted(ops.values(), key=lambda op: -op['total_us']),
        'busy_us': _busy_microseconds(intervals),
        'span_us': max(end for _, end in intervals) - min(start for start, _ in intervals),
        'calls': calls,
    }


def format_summary(summary: dict[str, Any], top: int = 15) -> str:
    ops, calls = summary['ops'], summary['calls']
    if not ops:
        return (
            f'profile: no device ops in {summary["trace"]} (on a GPU the profiler needs '
            'CUPTI, which jax[cuda12] installs)'
        )
    busy, span = summary['busy_us'], summary['span_us']
    total = sum(op['total_us'] for op in ops)
    per = f' ({calls} calls: {busy / calls / 1e3:.3f} ms busy per call)' if calls else ''
    lines = [
        f'profile: device busy {busy / span:.1%} of the {span / 1e3:.1f} ms from the '
        f'first op to the last{per}; {len(ops)} ops, {total / 1e3:.1f} ms summed over '
        'streams and threads',
        f'{"op":<28} {"kernel or thunk":<44} {"count":>6} {"ms":>9} {"share":>6}',
    ]
    for op in ops[:top]:
        kernel = op['kernel'] if op['kernel'] != op['op'] else ''  # A CPU thunk is named so.
        lines.append(
            f'{op["op"][:28]:<28} {kernel[:44]:<44} {op["count"]:>6} '
            f'{op["total_us"] / 1e3:>9.3f} {op["total_us"] / total:>6.1%}'
        )
    if len(ops) > top:
        rest = sum(op['total_us'] for op in ops[top:])
        lines.append(
            f'{f"({len(ops) - top} more ops)":<73} {"":>6} {rest / 1e3:>9.3f} {rest / total:>6.1%}'
        )
    return '\n'.join(lines)


def main(argv: list[str]) -> int:
    del argv
    try:
        summary = summarize_trace(latest_trace(_TRACE.value), _CALLS.value)
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(format_summary(summary, _TOP.value))
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['trace'])
    app.run(main, flags_parser=cli.parse_flags)
