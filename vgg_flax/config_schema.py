"""Every config field in one table (`FIELDS`): its default, the values it may take and whether a
resumed run may change it.

Everything that knows a field reads it here: `default_config()`, which experiment files start
from; `conformed`, which holds a config file, an override or a sweep point to the fields and their
types, so that a misspelt field is an error where it is set instead of a new field beside the
default that the run then trains with; `validate`, which checks every value before any data is
read; and `resume_conflicts`, which says what a resume may not change. A config is written as JSON
by `to_plain` and read back by `from_plain`; one written under a field's former name
(`RENAMED`) is read under its current name (`current_names`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

from vgg_flax import errors, input_pipeline, models

# What a value must be, where it is not (None where it is). Given the whole config, for a field
# whose allowed values depend on others'.
Check = Callable[[Any, ml_collections.ConfigDict], str | None]
# Why a resumed run may not change a field, given the config asked for now (flat); None: it may.
ResumeRule = Callable[[Mapping[str, Any]], str | None]


@dataclasses.dataclass(frozen=True)
class Field:
    """A config field. Its values have the type of its `default` (an int may stand for a float,
    a list for a tuple); where `choices` lists values, it takes one of them; `check` says what
    else a value must be. A resumed run may change it where `resumable` is True (or a rule that
    finds no reason against it): it says where data lives, how long to train, how often to log or
    save or how a value is computed, not what is computed at a given step."""

    default: Any
    check: Check | None = None
    choices: tuple[Any, ...] = ()
    resumable: bool | ResumeRule = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _must(holds: Callable[[Any], bool], must: str) -> Check:
    """A check of the value alone: `must` where `holds(value)` is false."""
    return lambda value, config: None if holds(value) else must


positive_int = _must(lambda v: _is_int(v) and v > 0, 'must be a positive integer')
positive_ints = _must(
    lambda v: all(_is_int(x) and x > 0 for x in v), 'must be a tuple of positive integers'
)
finite_positive = _must(
    lambda v: _is_number(v) and math.isfinite(v) and v > 0, 'must be a finite number > 0'
)
finite_non_negative = _must(
    lambda v: _is_number(v) and math.isfinite(v) and v >= 0, 'must be a finite number >= 0'
)
below_one = _must(lambda v: _is_number(v) and 0 <= v < 1, 'must be in [0, 1)')
probability = _must(lambda v: _is_number(v) and 0 <= v <= 1, 'must be in [0, 1]')


def count(zero_means: str) -> Check:
    """An integer >= 0, where 0 means `zero_means`."""
    return _must(lambda v: _is_int(v) and v >= 0, f'must be 0 ({zero_means}) or a positive integer')


def interval(low: float, high: float) -> Check:
    """A pair (min, max) with low < min <= max <= high."""
    return _must(
        lambda v: len(v) == 2 and all(map(_is_number, v)) and low < v[0] <= v[1] <= high,
        f'must be (min, max) with {low} < min <= max <= {high}',
    )


def _blocks(value: Any, config: ml_collections.ConfigDict) -> str | None:
    if all(
        isinstance(block, (tuple, list))
        and len(block) == 2
        and all(_is_int(n) and n > 0 for n in block)
        for block in value
    ):
        return None
    return (
        'must be () or (num_convs, features) pairs of positive integers, e.g. ((1, 64), (1, 128))'
    )


def _only_for_a_population(value: bool, config: ml_collections.ConfigDict) -> str | None:
    if value and config.population_size == 1:
        return 'must be False, or True for a population (config.population_size > 1)'
    return None


def _divides_every_width(value: int, config: ml_collections.ConfigDict) -> str | None:
    if problem := positive_int(value, config):
        return problem
    blocks = models.full_width_blocks(config.model)
    ratios = models.allowed_width_ratios(blocks)
    if value in ratios:
        return None
    widths = sorted({features for _, features in blocks})
    return (
        f'does not divide every conv width of {models.arch_name(config.model)} {widths}; use one '
        f'of {", ".join(map(str, ratios))}'
    )


def _names_its_directory(value: str, config: ml_collections.ConfigDict) -> str | None:
    if value == 'idx' and not config.data.idx_dir:
        return 'needs config.data.idx_dir: the directory of the four Fashion-MNIST IDX files'
    return None


def _large_enough(value: int, config: ml_collections.ConfigDict) -> str | None:
    """Each block halves the image, so the model's blocks set its smallest size."""
    num_blocks = len(models.full_width_blocks(config.model))
    least = models.min_image_size(num_blocks)
    if _is_int(value) and value >= least:
        return None
    return (
        f'is too small: {models.arch_name(config.model)} halves the image {num_blocks} times, so '
        f'it must be an integer of at least {least}'
    )


def _leaves_training_examples(value: int, config: ml_collections.ConfigDict) -> str | None:
    if problem := count('none')(value, config):
        return problem
    examples = config.data.max_train_examples or input_pipeline.NUM_EXAMPLES['train']
    if value and value >= examples:
        return (
            f'leaves no training examples of the {examples:,} in the split; hold out fewer '
            '(e.g. 5000)'
        )
    return None


def _translation(value: int, config: ml_collections.ConfigDict) -> str | None:
    height, width, _ = input_pipeline.IMAGE_SHAPE
    largest = min(height, width) // 2 - 1
    if _is_int(value) and 0 <= value <= largest:
        return None
    return f'must be an integer from 0 to {largest} (pixels of the {height}x{width} image)'


def _constant_length_schedule(now: Mapping[str, Any]) -> str | None:
    """The constant and step schedules and the warmup are defined in epochs from the start, so a
    longer run just continues them; the cosine schedule spans the run."""
    if now.get('train.lr_schedule') == 'cosine':
        return (
            "the cosine schedule spans the run's epochs, so every step still to come would change"
        )
    return None


FIELDS: dict[str, Field] = {
    'seed': Field(0),
    # The number of models trained side by side in one process, as one vmapped step on the
    # shared data (vgg_flax.population): member i has seed `seed + i`, and the results give the
    # members' mean and standard deviation. (A sweep's --seeds trains separate runs instead.)
    'population_size': Field(1, positive_int),
    # A population's members spread over the devices, each device training whole members (no
    # gradient all-reduce), instead of every batch split over the devices.
    'members_over_devices': Field(False, _only_for_a_population, resumable=True),
    # The VGG paper's A, B, D and E.
    'model.arch': Field('vgg11', choices=tuple(models.ARCHS)),
    # Other blocks in place of arch's: (num_convs, full width) per block, e.g. ((1, 64), (1, 128),
    # (2, 256)), three blocks for Fashion-MNIST's own 28 px (each block halves the image).
    'model.conv_arch': Field((), _blocks),
    # Every conv width is divided by this; the head keeps its own.
    'model.width_ratio': Field(4, _divides_every_width),
    'model.num_classes': Field(10, positive_int),
    'model.dense_features': Field((4096, 4096), positive_ints),
    'model.dropout_rate': Field(0.5, below_one),
    'model.use_bn': Field(False),
    # Compute dtype; parameters and optimiser state stay float32.
    'model.dtype': Field('float32', choices=tuple(models.DTYPES)),
    'model.kernel_init': Field('xavier_uniform', choices=tuple(models.KERNEL_INITS)),  # Xavier.
    'model.bias_init': Field('zeros', choices=tuple(models.BIAS_INITS)),
    # The first conv: 'lax' (cuDNN on a GPU), 'shifted_sum' (models.ShiftedSumConv: the same
    # parameters and values, faster on a GPU) or 'auto' (the faster one for the backend).
    'model.first_conv': Field('auto', choices=('auto', 'lax', 'shifted_sum'), resumable=True),
    # The other convs: 'lax' (XLA's convolution), 'patches' (models.PatchesConv: one matmul of
    # the nine shifted copies; the same parameters and values) or 'auto' ('patches' on a CPU for
    # the maps of at most models.CPU_PATCHES_UP_TO pixels, where it is faster, 'lax' elsewhere).
    'model.conv_impl': Field('auto', choices=('auto', 'lax', 'patches'), resumable=True),
    # 'tfds' (downloads) or 'idx' (the four original IDX files).
    'data.source': Field('tfds', _names_its_directory, choices=('tfds', 'idx')),
    # TFDS cache; '' for TFDS's default (~/tensorflow_datasets).
    'data.tfds_data_dir': Field('', resumable=True),
    # Directory of train-/t10k-images/labels IDX files (.gz or raw).
    'data.idx_dir': Field('', resumable=True),
    # Images are resized to this (bilinear) on the accelerator.
    'data.image_size': Field(224, _large_enough),
    # 0: the whole split; else the first N (smoke runs).
    'data.max_train_examples': Field(0, count('all')),
    'data.max_test_examples': Field(0, count('all')),
    # Hold out the last N training examples (after max_train_examples) as a validation set:
    # training never sees them, and every epoch is evaluated on them beside the test set, so
    # that settings can be chosen without looking at the test set. 0: train on them all.
    'data.validation_examples': Field(0, _leaves_training_examples),
    'train.batch_size': Field(128, positive_int),
    'train.eval_batch_size': Field(256, positive_int, resumable=True),
    'train.num_epochs': Field(5, positive_int, resumable=_constant_length_schedule),
    'train.learning_rate': Field(0.05, finite_positive),
    'train.momentum': Field(0.0, finite_non_negative),  # 0: plain SGD, as in the lesson.
    'train.nesterov': Field(False),
    # L2 on conv and dense kernels (not biases, not BN).
    'train.weight_decay': Field(0.0, finite_non_negative),
    'train.lr_schedule': Field('constant', choices=('constant', 'cosine', 'step')),
    'train.warmup_epochs': Field(0, count('none')),
    # The 'step' schedule: the epochs at which the learning rate is multiplied by...
    'train.lr_decay_epochs': Field((), positive_ints),
    'train.lr_decay_factor': Field(0.1, finite_non_negative),  # ...this factor.
    'train.checkpoint_every_epochs': Field(1, positive_int, resumable=True),
    'train.keep_checkpoints': Field(3, positive_int, resumable=True),
    # Step log (steps.jsonl), progress and non-finite checks.
    'train.log_every_steps': Field(50, positive_int, resumable=True),
    # Steps per compiled call: above 1, they run under one compiled loop, saving a dispatch per
    # step where the step is tiny (small images on a GPU); on a CPU it is slower (see README).
    # The same steps, compiled differently: the metrics match a run of another value to float
    # rounding, not bit for bit, and a resume may change it (a run so resumed is reproduced by
    # the same launches, not by one uninterrupted run).
    'train.steps_per_call': Field(1, positive_int, resumable=True),
    'train.label_smoothing': Field(0.0, below_one),  # 0: the lesson's plain cross-entropy.
    # Decay of an exponential moving average of the weights (and BatchNorm statistics) that
    # evaluation and checkpoints use; 0: none, evaluation uses the weights as trained.
    'train.ema_decay': Field(0.0, below_one),
    # Test-time augmentation: the mean of the logits of each test image and its mirror image.
    'eval.tta': Field(False),
    # Test-time translation: the mean of the logits over every shift of the 28x28 source by up
    # to this many pixels in each direction ((2n+1)^2 views, each with its mirror under
    # eval.tta; the border black, as augment.translate pads). Each view costs a forward pass.
    'eval.tta_translate': Field(0, _translation),
    # Evaluate the validation and test sets every this many epochs, and after the last: an
    # epoch between has train metrics only. Spares the evaluation's time (test-time views
    # multiply it) for training.
    'eval.every_epochs': Field(1, positive_int, resumable=True),
    # On-device augmentation of the training images (vgg_flax.augment), all off by default. Pad
    # by this many pixels (of the 28x28 source) and crop at random.
    'augment.translate': Field(0, _translation),
    'augment.flip': Field(False),  # Mirror left-right with probability 1/2.
    # Random erasing (Zhong et al. 2017): the probability per image, the erased fraction of the
    # image, and its height/width (drawn log-uniformly).
    'augment.erase_prob': Field(0.0, probability),
    'augment.erase_area': Field((0.02, 0.4), interval(0, 1)),
    'augment.erase_aspect': Field((0.3, 3.3), interval(0, math.inf)),
}

# Former names of fields: a config written with one (an older run's config.json) is read under
# the current name, and a config file or an override that sets one is told the current name.
RENAMED = {'num_seeds': 'population_size'}

# The fields a resumed run may change (`train.num_epochs` only where its rule allows).
RESUMABLE_CHANGES = tuple(name for name, field in FIELDS.items() if field.resumable)

# What a field must hold, by the type of its default.
_KINDS = {
    bool: 'True or False',
    int: 'an integer',
    float: 'a number',
    str: 'a string',
    tuple: 'a tuple',
}


def default_config() -> ml_collections.ConfigDict:
    """Every field at its default: D2L's VGG-11 recipe (width ratio 4, Fashion-MNIST at 224 px,
    SGD lr 0.05, 5 epochs)."""
    return ml_collections.ConfigDict(_nested({name: f.default for name, f in FIELDS.items()}))


def _of_kind(value: Any, default: Any) -> Any:
    """`value` as the type of `default` where it stands for one (an int for a float, a list for
    a tuple, as an override or JSON gives them), else as it is."""
    if type(default) is float and type(value) is int:
        return float(value)
    if type(default) is tuple and type(value) is list:
        return tuple(value)
    return value


def _kind_problem(value: Any, default: Any) -> str | None:
    if type(_of_kind(value, default)) is type(default):
        return None
    return f'must be {_KINDS[type(default)]}'


def conformed(config: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
    """`config` with exactly the schema's fields, each of its default's type, so that a misspelt
    field fails where `source` sets it instead of leaving its default in force. An int where a
    number is due becomes that float, and lists where a tuple is due tuples, as an override gives
    them; anything else is a ConfigError naming the field."""
    given = flatten(config.to_dict())
    if unknown := unknown_field(given):
        unknown_name, close = unknown
        raise errors.ConfigError(
            f'{source} sets config.{unknown_name}, which is not a config field'
            + (
                f'; did you mean config.{close}?'
                if close
                else '; config_schema.default_config() has every field.'
            )
        )
    values = {}
    for name, field in FIELDS.items():
        if name not in given:
            raise errors.ConfigError(
                f'{source} has no config.{name}; start from config_schema.default_config(), '
                'which has every field.'
            )
        value = _of_kind(given[name], field.default)
        if problem := _kind_problem(value, field.default):
            raise errors.ConfigError(
                f'{source} sets config.{name}={value!r}; it {problem}, as its default '
                f'{field.default!r} is.'
            )
        values[name] = as_tuples(value)
    result = default_config()
    result.update_from_flattened_dict(values)
    return result


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first field whose value the schema refuses and what it must
    be, each field checked in the table's order (so a field's check may rely on those above)."""
    for name, field in FIELDS.items():
        value = config[name]
        problem = _kind_problem(value, field.default)
        if not problem and field.choices and value not in field.choices:
            problem = f'is not supported; use one of {", ".join(map(repr, field.choices))}'
        if not problem and field.check:
            problem = field.check(_of_kind(value, field.default), config)
        if problem:
            raise ValueError(f'config.{name}={value!r} {problem}.')


def unknown_field(fields: Iterable[str]) -> tuple[str, str | None] | None:
    """The first of the dotted `fields` that is not a config field, and the field it most likely
    meant: a renamed field's current name, else the closest name, if any is close."""
    for field in fields:
        if field not in FIELDS:
            close = RENAMED.get(field) or next(
                iter(difflib.get_close_matches(field, FIELDS, n=1)), None
            )
            return field, close
    return None


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields whose values differ between two configs (as JSON) that a resumed run may not
    change, each as 'field: saved in the run, current now', with the reason where a field's rule
    gives one."""
    saved_flat, current_flat = flatten(saved), flatten(current)
    conflicts = []
    for key in sorted(set(saved_flat) | set(current_flat)):
        if saved_flat.get(key) == current_flat.get(key):
            continue
        rule = FIELDS[key].resumable if key in RESUMABLE_CHANGES else False
        reason = rule(current_flat) if callable(rule) else None if rule else ''
        if reason is not None:
            conflicts.append(
                f'{key}: {saved_flat.get(key, "<absent>")!r} in the run, '
                f'{current_flat.get(key, "<absent>")!r} now' + (f' ({reason})' if reason else '')
            )
    return conflicts


def current_names(plain: dict[str, Any]) -> dict[str, Any]:
    """`plain` (a config as JSON) with each field it holds under a former name (`RENAMED`) under
    the current one: an older run's config.json reads as the config it was."""
    flat = flatten(plain)
    for old, new in RENAMED.items():
        if old in flat and new not in flat:
            flat[new] = flat.pop(old)
    return _nested(flat)


def as_tuples(value: Any) -> Any:
    """`value` with every list in it a tuple: a config's sequences are tuples (JSON's lists, a
    config file's lists and an override's are not)."""
    if isinstance(value, dict):
        return {key: as_tuples(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(item) for item in value)
    return value


def to_plain(value: Any) -> Any:
    """A ConfigDict (or part of one) as JSON-ready dicts and lists."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return json.loads(json.dumps(value))


def from_plain(plain: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of `to_plain`: lists become tuples again, so the config equals the original."""
    return ml_collections.ConfigDict(as_tuples(plain))


def flatten(plain: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': {}} -> {'a.b': 1, 'c': {}}: an empty section is a field of its own."""
    flat = {}
    for key, value in plain.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten`."""
    plain: dict[str, Any] = {}
    for field, value in flat.items():
        *sections, name = field.split('.')
        node = plain
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return plain
