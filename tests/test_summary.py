"""The shape summary: its table, its totals, and the CLI's overrides and errors."""

from __future__ import annotations

import pytest
from test_models import closed_form_params

from vgg_flax import summary

from conftest import ROOT, load_experiment, tiny_config


@pytest.mark.slow
def test_summary_rows_and_totals():
    config = tiny_config(idx_dir='unread')
    config.model.conv_arch = ()  # VGG-11's five blocks.
    config.data.image_size = 64
    result = summary.summarize(config)
    names = [layer.name for layer in result.layers]
    assert names == [
        'input',
        'block1',
        'block2',
        'block3',
        'block4',
        'block5',
        'dense1',
        'dense2',
        'head',
    ]
    assert [layer.output_shape for layer in result.layers[1:6]] == [
        (32, 32, 4),
        (16, 16, 8),
        (8, 8, 16),
        (4, 4, 32),
        (2, 2, 32),
    ]
    assert result.layers[1].activation_bytes == 32 * 32 * 4 * 4
    expected = closed_form_params('vgg11', 16, 64, dense=(64, 64), use_bn=True)
    assert result.num_params == expected == sum(layer.params for layer in result.layers)
    # Forward FLOPs: 2 per multiply-add of the convs and dense layers, plus XLA's small extras
    # (biases, ReLU, pooling). XLA counts only the taps inside the image: 3S-2 per axis.
    macs, channels, size = 0, 1, 64
    for num_convs, features in ((1, 4), (1, 8), (2, 16), (2, 32), (2, 32)):
        for _ in range(num_convs):
            macs += (3 * size - 2) ** 2 * channels * features
            channels = features
        size //= 2
    macs += 2 * 2 * 32 * 64 + 64 * 64 + 64 * 10
    assert 2 * macs <= result.forward_flops_per_example <= 2.3 * macs, macs
    # A training step holds at least the parameters, their gradients and the dataset.
    assert result.train_step_bytes > 2 * 4 * expected + summary.TRAIN_EXAMPLES * 784


@pytest.fixture
def run_summary(run_cli):
    return lambda *args: run_cli(summary, *args)


@pytest.mark.slow
def test_cli_prints_the_lessons_shapes_and_parameter_count(run_summary):
    done = run_summary(f'--config={ROOT / "experiments" / "d2l_vgg11.py"}')
    assert done.returncode == 0, done.stderr
    for row in (
        'block1',
        '112x112x16',
        '56x56x32',
        '28x28x64',
        '14x14x128',
        '7x7x128',
        'parameters: 43,093,322',
        'forward FLOPs per image',
        'training step at batch 128',
    ):
        assert row in done.stdout


@pytest.mark.slow
def test_cli_override_applies(run_summary):
    done = run_summary(
        f'--config={ROOT / "experiments" / "d2l_vgg11.py"}', '--config.model.width_ratio=1'
    )
    assert done.returncode == 0, done.stderr
    assert '112x112x64' in done.stdout


@pytest.mark.parametrize(
    'override,message',
    [
        ('--config.model.no_such_field=1', '--config.model.no_such_field: the config has no such'),
        ('--config.model.width_ratio=3', 'config.model.width_ratio=3 does not divide'),
        ('--config.data.image_size=16', 'config.data.image_size=16 is too small'),
    ],
)
def test_cli_rejects_unknown_fields_and_bad_values(override, message, run_summary):
    done = run_summary(f'--config={ROOT / "experiments" / "d2l_vgg11.py"}', override)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.slow
def test_every_named_arch_summarises_at_full_width():
    config = load_experiment(ROOT / 'experiments' / 'd2l_vgg11.py')
    config.model.arch, config.model.width_ratio = 'vgg19', 1
    result = summary.summarize(config)
    assert result.layers[5].output_shape == (7, 7, 512)
    assert result.forward_flops_per_example > 19e9


def test_forward_flops_are_the_networks_however_its_convolutions_are_computed():
    """VGG-11 at 32 px ends in 2x2 maps, which `conv_impl='auto'` computes as patches on a CPU;
    the FLOPs reported are the network's (XLA's convolution count) under every setting."""
    flops = set()
    for first_conv, conv_impl in (('lax', 'lax'), ('auto', 'auto'), ('shifted_sum', 'patches')):
        config = load_experiment(f'{ROOT}/experiments/quick.py')
        config.model.first_conv, config.model.conv_impl = first_conv, conv_impl
        flops.add(summary.summarize(config).forward_flops_per_example)
    assert len(flops) == 1 and flops.pop() > 0
