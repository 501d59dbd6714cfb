"""vgg_flax's training step against PyTorch's on this CPU, side by side in one run.

For each config, rounds alternate `python -m vgg_flax.benchmark` (the compiled step alone) and
`benchmarks/torch_reference.py --like` (the same network and step in PyTorch: eager and
`torch.compile`, NCHW and channels_last), so that a machine's drift hits both alike. It prints
each round, then per config the median over rounds of ours, of each PyTorch variant, and ours
over PyTorch's best variant. Both run on all of the CPU's cores (torch's default threads).

  pip install -r benchmarks/requirements.txt
  python benchmarks/cpu_peer.py [--configs=quick,native_28px,d2l_vgg11] [--rounds=3]
      [--steps=20 --repeats=3] [--variants=eager,eager_channels_last,compile,...]
      [--output=cpu_peer.json]

The lesson's recipe (`d2l_vgg11`) runs at batch 32 (`BATCH_SIZES`), as a CPU user would train it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import torch_reference  # noqa: F401  Where PyTorch is missing, this says so before any timing.

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH_SIZES = {'d2l_vgg11': 32}  # The others at their config's batch size.
# Steps per timed repeat where a step takes seconds (the 224 px recipe).
STEPS = {'d2l_vgg11': 4}


def run_json(command: list[str], output: str) -> dict[str, Any]:
    """Runs `command`, which writes JSON to `output`; its output shown only if it fails."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f'{" ".join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}')
    with open(output) as f:
        return json.load(f)


def one_round(config: str, args: argparse.Namespace, scratch: str) -> dict[str, float]:
    """Images/sec of ours and of each PyTorch variant, ours first."""
    ours_json, theirs_json = (os.path.join(scratch, f'{config}_{who}.json') for who in 'ab')
    steps = min(args.steps, STEPS.get(config, args.steps))
    ours = [
        sys.executable, '-m', 'vgg_flax.benchmark', f'--config=experiments/{config}.py',
        f'--steps={steps}', f'--repeats={args.repeats}', f'--warmup={args.warmup}',
        '--loop_steps=0', f'--output={ours_json}',
    ]  # fmt: skip
    if config in BATCH_SIZES:
        ours.append(f'--config.train.batch_size={BATCH_SIZES[config]}')
    rates = {'ours': run_json(ours, ours_json)['step']['images_per_sec']['median']}
    theirs = [
        sys.executable, os.path.join(HERE, 'torch_reference.py'), '--device=cpu',
        f'--like={ours_json}', f'--variants={args.variants}', f'--steps={steps}',
        f'--repeats={args.repeats}', f'--warmup={args.warmup}', f'--output={theirs_json}',
    ]  # fmt: skip
    for variant, result in run_json(theirs, theirs_json)['variants'].items():
        rates[variant] = result['median']
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--configs', default='quick,native_28px,d2l_vgg11')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=20, help='steps per timed repeat')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument(
        '--variants', default='eager,eager_channels_last,compile,compile_channels_last'
    )
    parser.add_argument('--output', default='', help='write every round as JSON here')
    args = parser.parse_args()
    configs = args.configs.split(',')
    if missing := [c for c in configs if not os.path.isfile(f'{ROOT}/experiments/{c}.py')]:
        parser.error(f'no experiments/{missing[0]}.py; configs are names in experiments/')
    rounds: dict[str, list[dict[str, float]]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(args.rounds):
            for config in configs:
                rates = one_round(config, args, scratch)
                rounds[config].append(rates)
                shown = '  '.join(f'{name} {rate:,.1f}' for name, rate in rates.items())
                print(f'round {number + 1} {config}: {shown}', flush=True)
    summary = {}
    print("\nimages/sec, median over rounds; ours over PyTorch's best variant")
    for config, results in rounds.items():
        medians = {name: statistics.median(r[name] for r in results) for name in results[0]}
        best = max((name for name in medians if name != 'ours'), key=medians.__getitem__)
        summary[config] = {
            'medians': medians,
            'best_peer': best,
            'ours_over_best': medians['ours'] / medians[best],
        }
        batch = BATCH_SIZES.get(config, 'config')
        print(
            f'{config} (batch {batch}): ours {medians["ours"]:,.1f}  PyTorch best {best} '
            f'{medians[best]:,.1f}  ratio {medians["ours"] / medians[best]:.2f}x  ('
            + ', '.join(f'{n} {v:,.1f}' for n, v in medians.items() if n != 'ours')
            + ')'
        )
    if args.output:
        with open(args.output, 'w') as f:
            json.dump({'args': vars(args), 'rounds': rounds, 'summary': summary}, f, indent=2)


if __name__ == '__main__':
    main()
