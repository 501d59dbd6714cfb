"""Shapes, parameter counts and image-size errors of VGGBlock and VGG, via jax.eval_shape."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vgg_flax import config_schema, models, train_state

RATIOS = (1, 2, 4, 8, 16)
SIZES = (32, 64, 96, 224)


def model_config(**overrides) -> ml_collections.ConfigDict:
    config = config_schema.default_config().model
    config.update(overrides)
    return config


def output_and_variables(module, x_shape, train=False):
    """(output shape struct, variables shape tree) without computing anything, from one trace."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(
        functools.partial(module.init_with_output, train=train),
        {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
        x,
    )


def closed_form_params(
    arch: str,
    ratio: int,
    image_size: int,
    in_channels: int = 1,
    dense=(4096, 4096),
    num_classes=10,
    use_bn=False,
) -> int:
    """3x3 convs with biases (+ BN scale and bias), then the dense head on the flattened map."""
    total, channels = 0, in_channels
    for num_convs, features in models.ARCHS[arch]:
        features //= ratio
        for _ in range(num_convs):
            total += 9 * channels * features + features + (2 * features if use_bn else 0)
            channels = features
    width = image_size // 2 ** len(models.ARCHS[arch])
    fan_in = width * width * channels
    for features in (*dense, num_classes):
        total += fan_in * features + features
        fan_in = features
    return total


@pytest.mark.parametrize('size', [32, 33, 7, 2])
@pytest.mark.parametrize('use_bn', [False, True])
def test_block_halves_space_and_sets_channels(size, use_bn):
    block = models.VGGBlock(num_convs=2, features=24, use_bn=use_bn)
    out, _ = output_and_variables(block, (3, size, size, 5), train=use_bn)
    assert out.shape == (3, size // 2, size // 2, 24)


def test_block_has_num_convs_convolutions():
    _, variables = output_and_variables(models.VGGBlock(num_convs=3, features=8), (1, 8, 8, 2))
    kernels = [v['kernel'].shape for v in variables['params'].values()]
    assert kernels == [(3, 3, 2, 8), (3, 3, 8, 8), (3, 3, 8, 8)]


@pytest.mark.parametrize(
    'arch,ratio,size,use_bn',
    list(itertools.product(sorted(models.ARCHS), RATIOS, SIZES, (False, True))),
)
def test_vgg_logits_shape_and_param_count(arch, ratio, size, use_bn):
    model = models.create_model(model_config(arch=arch, width_ratio=ratio, use_bn=use_bn))
    logits, variables = output_and_variables(model, (2, size, size, 1), train=use_bn)
    assert logits.shape == (2, 10)
    assert logits.dtype == jnp.float32
    params = sum(x.size for x in jax.tree.leaves(variables['params']))
    assert params == closed_form_params(arch, ratio, size, use_bn=use_bn)
    assert ('batch_stats' in variables) == use_bn


@pytest.mark.parametrize('ratio', [1, 4])
def test_vgg11_block_shapes_at_224_match_the_lesson(ratio):
    model = models.create_model(model_config(width_ratio=ratio))
    x = jax.ShapeDtypeStruct((1, 224, 224, 1), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    _, state = jax.eval_shape(
        functools.partial(
            model.apply, capture_intermediates=lambda m, _: m.name and m.name.startswith('block')
        ),
        variables,
        x,
    )
    shapes = [state['intermediates'][f'block{i}']['__call__'][0].shape for i in range(1, 6)]
    assert shapes == [
        (1, s, s, c // ratio) for s, c in ((112, 64), (56, 128), (28, 256), (14, 512), (7, 512))
    ]


def test_lesson_net_has_43_093_322_parameters():
    model = models.create_model(model_config(width_ratio=4))
    _, variables = output_and_variables(model, (1, 224, 224, 1))
    assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 43_093_322


def test_bfloat16_computes_in_bf16_with_float32_params():
    model = models.create_model(model_config(width_ratio=16, dtype='bfloat16'))
    logits, variables = output_and_variables(model, (2, 32, 32, 1))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
    jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
    convs = [e for e in jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
    assert convs and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in convs)


@pytest.fixture(scope='module')
def small_vgg():
    """A narrow VGG-11 for 32 px images and its initial variables."""
    model = models.create_model(model_config(width_ratio=16, dense_features=(64,)))
    return model, train_state.run_unoptimised(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1))
    )


def test_default_init_is_xavier_uniform_with_zero_biases(small_vgg):
    _, variables = small_vgg
    kernel = variables['params']['dense1']['kernel']
    limit = (6 / sum(kernel.shape)) ** 0.5
    assert float(jnp.abs(kernel).max()) <= limit
    assert float(jnp.abs(kernel).max()) > 0.9 * limit
    assert all(
        float(jnp.abs(leaf).max()) == 0
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
        if path[-1].key == 'bias'
    )


def test_dropout_is_active_only_in_training(small_vgg):
    model, variables = small_vgg
    x = jnp.ones((1, 32, 32, 1))

    @functools.partial(jax.jit, static_argnums=1)
    def run(key, train):
        return model.apply(variables, x, train=train, rngs={'dropout': key})

    assert jnp.array_equal(run(jax.random.key(1), False), run(jax.random.key(2), False))
    assert not jnp.array_equal(run(jax.random.key(1), True), run(jax.random.key(2), True))


@pytest.mark.parametrize('size', [16, 31])
def test_image_smaller_than_32_is_a_clear_error(size):
    model = models.create_model(model_config())
    with pytest.raises(ValueError, match=r'data.image_size must be at least 32'):
        output_and_variables(model, (1, size, size, 1))


def test_allowed_width_ratios_divide_every_width():
    assert models.allowed_width_ratios(models.ARCHS['vgg11']) == [1, 2, 4, 8, 16, 32, 64]
    assert models.conv_arch_for(models.ARCHS['vgg11'], 4) == (
        (1, 16),
        (1, 32),
        (2, 64),
        (2, 128),
        (2, 128),
    )
    assert models.allowed_width_ratios(((1, 48), (2, 96))) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]


def test_conv_arch_replaces_the_named_blocks_and_sets_the_smallest_image():
    """Three blocks at Fashion-MNIST's own 28 px: 28 -> 14 -> 7 -> 3."""
    config = model_config(
        arch='vgg16', conv_arch=((1, 64), (2, 128), (2, 256)), width_ratio=4, dense_features=(256,)
    )
    assert models.arch_name(config) == 'conv_arch ((1, 64), (2, 128), (2, 256))'
    model = models.create_model(config)
    assert model.conv_arch == ((1, 16), (2, 32), (2, 64))
    logits, variables = output_and_variables(model, (2, 28, 28, 1))
    assert logits.shape == (2, 10)
    assert [len(variables['params'][f'block{i}']) for i in (1, 2, 3)] == [1, 2, 2]
    assert variables['params']['dense1']['kernel'].shape == (3 * 3 * 64, 256)
    with pytest.raises(ValueError, match=r'data.image_size must be at least 8'):
        output_and_variables(model, (1, 7, 7, 1))
    as_lists = model_config(conv_arch=[[1, 64], [2, 128], [2, 256]], width_ratio=4)
    assert models.create_model(as_lists).conv_arch == model.conv_arch  # As a config file may.


@pytest.mark.parametrize('size', [2, 7, 8, 33])
def test_max_pool_2x2_equals_flax_max_pool(size):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))

    @jax.jit  # One program, not one per operation.
    def pooled_and_grads(x):
        return [
            (pool(x), jax.grad(lambda x, pool=pool: (pool(x) ** 2).sum())(x))
            for pool in (
                models.max_pool_2x2,
                lambda x: nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding='VALID'),
            )
        ]

    (pooled, grad), (expected, expected_grad) = pooled_and_grads(x)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_allclose(grad, expected_grad)


@pytest.mark.slow
@pytest.mark.parametrize('channels', [1, 3, 16])
@pytest.mark.parametrize('module_class', [models.ShiftedSumConv, models.PatchesConv])
def test_shifted_sum_and_patches_convs_equal_flax_conv(channels, module_class):
    """The same parameters, values and gradients as nn.Conv, up to float32 rounding, on maps of
    odd and even sizes, 2x2 among them (where `conv_impl='auto'` uses patches on a CPU)."""
    conv = nn.Conv(8, (3, 3), padding='SAME')
    shifted = module_class(8, bias_init=nn.initializers.normal(1.0))
    x = jax.random.uniform(
        jax.random.key(1), (2, 9, 7, channels) if channels < 8 else (3, 2, 2, channels)
    )
    variables = jax.jit(shifted.init)(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, jax.eval_shape(conv.init, jax.random.key(0), x)
    )

    @jax.jit
    def value_and_grads(variables):
        return [
            jax.value_and_grad(lambda v, module=module: (module.apply(v, x) ** 2).sum())(variables)
            for module in (conv, shifted)
        ]

    (value, grads), (shifted_value, shifted_grads) = value_and_grads(variables)
    np.testing.assert_allclose(shifted_value, value, rtol=1e-5)
    # A gradient sums over every position, in an order that depends on the CPU's vector width:
    # each element is held to float32 rounding on the scale of its array's largest one.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max()),
        shifted_grads,
        grads,
    )


@pytest.mark.parametrize('arch', ['vgg11', 'vgg13'])
def test_the_first_conv_choice_keeps_the_parameter_tree(arch):
    """Checkpoints move between `model.first_conv` settings (and the runs from before it)."""
    trees = [
        output_and_variables(
            models.create_model(model_config(arch=arch, first_conv=c)), (1, 32, 32, 1)
        )[1]
        for c in ('lax', 'shifted_sum')
    ]
    assert jax.tree.map(lambda x: (x.shape, x.dtype), trees[0]) == jax.tree.map(
        lambda x: (x.shape, x.dtype), trees[1]
    )
    assert list(trees[0]['params']['block1']) == (
        ['Conv_0'] if arch == 'vgg11' else ['Conv_0', 'Conv_1']
    )


@pytest.mark.parametrize('arch', ['vgg11', 'vgg13'])
def test_the_conv_impl_choice_keeps_the_parameter_tree_and_the_function(arch):
    """Checkpoints move between `model.conv_impl` settings (and the runs from before it), and
    every setting computes the same network, to float32 rounding."""
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 1))
    nets = [
        models.create_model(model_config(arch=arch, width_ratio=16, use_bn=True, conv_impl=c))
        for c in ('lax', 'patches', 'auto')
    ]
    variables = jax.jit(nets[0].init)(jax.random.key(0), x)
    for net in nets[1:]:
        assert jax.tree.map(jnp.shape, jax.eval_shape(net.init, jax.random.key(0), x)) == (
            jax.tree.map(jnp.shape, variables)
        )
    outputs = [jax.jit(net.apply)(variables, x) for net in nets]
    for output in outputs[1:]:
        np.testing.assert_allclose(output, outputs[0], rtol=1e-4, atol=1e-5)


def test_auto_conv_impl_uses_patches_on_a_cpu_for_2x2_maps_only():
    assert models.patches_up_to('auto', 'cpu') == models.CPU_PATCHES_UP_TO == 4
    assert models.patches_up_to('auto', 'gpu') == models.patches_up_to('lax', 'cpu') == 0
    assert models.patches_up_to('patches', 'gpu') > 224 * 224
    net = models.create_model(model_config(conv_impl='auto'))
    jaxpr = str(jax.make_jaxpr(lambda x: net.init(jax.random.key(0), x))(jnp.zeros((1, 32, 32, 1))))
    # VGG-11 at 32 px: six convs at 32, 16, 8, 8, 4 and 4 px through XLA, two at 2x2 as patches.
    expected = 6 if jax.default_backend() == 'cpu' else 8
    assert jaxpr.count('conv_general_dilated') == expected


def test_auto_first_conv_is_the_shifted_sum_on_a_gpu_only():
    assert models.resolve_first_conv('auto', 'gpu') == 'shifted_sum'
    assert models.resolve_first_conv('auto', 'cpu') == 'lax'
    assert models.resolve_first_conv('lax', 'gpu') == 'lax'
    assert models.create_model(model_config()).first_conv == (
        'shifted_sum' if jax.default_backend() == 'gpu' else 'lax'
    )
