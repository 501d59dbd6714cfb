"""Trains and evaluates an experiment config, resuming its workdir if it holds a checkpoint.

  python -m vgg_flax.main --config=experiments/d2l_vgg11.py --workdir=runs/d2l \
      [--config.train.num_epochs=10 ...]
"""

from __future__ import annotations

import sys

from absl import flags

from vgg_flax import cli, environment, errors, train


def main(argv: list[str]) -> int:
    environment.start_cli(argv)
    try:
        results = train.train_and_evaluate(cli.CONFIG.value, cli.WORKDIR.value)
    except (
        ValueError,
        errors.DataError,
        errors.RunDirError,
        errors.SaveError,
        errors.NonFiniteLossError,
    ) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except errors.TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # Ctrl-C before the loop catches signals.
        return cli.interrupted_while_starting()
    print(
        f'test accuracy {results["test_accuracy"]:.4f} after {results["epochs"]} epochs; '
        f'results in {cli.WORKDIR.value}/results.json'
    )
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    cli.run(main)
