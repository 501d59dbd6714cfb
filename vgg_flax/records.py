"""The run's records: a JSON record per logged step and per epoch, and the results of a
finished run (one model's, or a population's means and spreads over its members)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from vgg_flax.train_state import Sums, mean_metrics


def train_record(
    sums: Sums,
    step: int,
    steps_per_epoch: int,
    since: tuple[int, float],
    now: float,
    examples_per_step: int,
    learning_rate_fn: optax.Schedule,
) -> dict[str, Any]:
    """The epoch's running train metrics at `step` (fetched from the devices), with the
    examples/sec since `since`, a (step, time) pair, and the learning rate of the last step."""
    loss, accuracy = mean_metrics(sums)
    return to_record(
        {
            'step': step,
            'epoch': step / steps_per_epoch,
            'train_loss': loss,
            'train_accuracy': accuracy,
            'examples_per_sec': (step - since[0]) * examples_per_step / (now - since[1]),
            'learning_rate': float(learning_rate_fn(step - 1)),
        }
    )


def to_record(values: dict[str, Any]) -> dict[str, Any]:
    """Host values as a JSON record. A population's per-member arrays become their mean under
    the same key, and 'members' lists each member's values."""
    record, members = {}, {}
    for key, value in values.items():
        value = np.asarray(value)
        if value.ndim:
            members[key] = value.tolist()
            value = value.mean()
        record[key] = value.item()
    if members:
        record['members'] = [
            dict(zip(members, values, strict=True))
            for values in zip(*members.values(), strict=True)
        ]
    return record


def merge_records(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The keys of both records; each member's values of both where they have members."""
    merged = {**first, **second}
    if 'members' in first and 'members' in second:
        merged['members'] = [
            {**a, **b} for a, b in zip(first['members'], second['members'], strict=True)
        ]
    return merged


def model_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The final and the best test metrics of one model's history (of the epochs evaluated;
    the last always is)."""
    final = history[-1]
    best = max(evaluated(history), key=lambda record: record['test_accuracy'])
    return {
        key: final[key]
        for key in (
            'test_accuracy',
            'test_loss',
            'val_accuracy',
            'val_loss',
            'train_accuracy',
            'train_loss',
        )
        if key in final
    } | {'best_test_accuracy': best['test_accuracy'], 'best_epoch': best['epoch']}


def evaluated(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the epochs after which the evaluation sets were evaluated
    (`config.eval.every_epochs`)."""
    return [record for record in history if 'test_accuracy' in record]


TARGET_ACCURACY = 0.95  # Time to this test accuracy is the speed benchmark of a whole run.


def time_to_accuracy(
    history: list[dict[str, Any]], target: float = TARGET_ACCURACY
) -> dict[str, Any] | None:
    """The first epoch whose test accuracy (a population's mean) reaches `target`, with the
    training seconds to its end (without compiling and evaluation, as airbench counts) and the
    seconds with evaluation; None if no epoch did."""
    train_seconds = wall_seconds = 0.0
    for record in history:
        train_seconds += record['train_seconds']
        wall_seconds += record['epoch_seconds']
        if 'test_accuracy' in record and record['test_accuracy'] >= target:
            return {
                'target': target,
                'epoch': record['epoch'],
                'train_seconds': train_seconds,
                'wall_seconds': wall_seconds,
            }
    return None


def summarize_run(
    history: list[dict[str, Any]],
    *,
    num_params: int,
    train_flops_per_step: float,
    compile_seconds: float,
    examples_per_step: int,
) -> dict[str, Any]:
    """The numbers a sweep table or a paper needs from one finished run.

    For a population, the model's numbers are the means over its members, with their standard
    deviations (`<key>_std`), and 'members' lists each member's; examples/sec counts every
    member's examples.
    """
    final = history[-1]
    results = model_results(history)
    if 'members' in final:
        members = [
            model_results([{**record, **record['members'][i]} for record in history])
            for i in range(len(final['members']))
        ]
        for key in list(results):
            values = [member[key] for member in members]
            results[key], results[f'{key}_std'] = (
                float(np.mean(values)),
                float(np.std(values, ddof=1)),
            )
        results['members'] = members
    devices = jax.devices()
    return {
        'epochs': final['epoch'],
        'steps': final['step'],
        **results,
        'num_params': num_params,
        'train_flops_per_example': train_flops_per_step / examples_per_step,
        'examples_per_sec': float(np.median([r['examples_per_sec'] for r in history])),
        'train_seconds': sum(r['train_seconds'] for r in history),
        'wall_seconds': sum(r['epoch_seconds'] for r in history),
        'compile_seconds': compile_seconds,
        'time_to_target': time_to_accuracy(history),
        'device_kind': devices[0].device_kind,
        'num_devices': len(devices),
    }
