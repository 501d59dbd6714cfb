"""Every config field with its default (the lesson's recipe), and configs as JSON.

Experiment files in `experiments/` start from `default_config()`, or from another experiment's
config (`experiment_config`), and change what they need. Every experiment file is loaded by
`load_config`, which holds its config to the defaults' fields and types, so a misspelt field is an
error where it is set, as an override of an unknown field is, instead of a new field beside the
default that the run then trains with.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import os
import types
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ml_collections

from vgg_flax import augment

# Fields that a resumed run may change: they say where data lives, how long to train, how often
# to log or save and how a value is computed, not what is computed at a given step.
RESUMABLE_CHANGES = (
    'members_over_devices',
    'model.first_conv',
    'data.tfds_data_dir',
    'data.idx_dir',
    'train.num_epochs',
    'train.eval_batch_size',
    'train.checkpoint_every_epochs',
    'train.keep_checkpoints',
    'train.log_every_steps',
    'train.steps_per_call',
)


def default_config() -> ml_collections.ConfigDict:
    """D2L's VGG-11 recipe: width ratio 4, Fashion-MNIST at 224 px, SGD lr 0.05, 5 epochs."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Above 1, a population: this many copies of the model, with seeds seed, seed + 1, ..., as
    # one vmapped step on the shared data (vgg_flax.train_steps); its results give their mean and
    # standard deviation.
    config.num_seeds = 1
    # A population's members spread over the devices, each device training whole members (no
    # gradient all-reduce), instead of every batch split over the devices.
    config.members_over_devices = False

    config.model = model_defaults()
    config.data = data_defaults()
    config.train = train_defaults()

    config.eval = ml_collections.ConfigDict()
    # Test-time augmentation: the mean of the logits of each test image and its mirror image.
    config.eval.tta = False

    # On-device augmentation of the training images (vgg_flax.augment); all off by default.
    config.augment = augment.default_augment_config()
    return config


def model_defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.arch = 'vgg11'  # vgg11, vgg13, vgg16 or vgg19 (VGG paper's A, B, D, E).
    # Other blocks in place of arch's: (num_convs, full width) per block, e.g. ((1, 64), (1, 128),
    # (2, 256)), three blocks for Fashion-MNIST's own 28 px (each block halves the image).
    config.conv_arch = ()
    config.width_ratio = 4  # Every conv width is divided by this; the head keeps its own.
    config.num_classes = 10
    config.dense_features = (4096, 4096)
    config.dropout_rate = 0.5
    config.use_bn = False
    config.dtype = 'float32'  # Compute dtype; parameters and optimiser state stay float32.
    config.kernel_init = 'xavier_uniform'  # The lesson's Xavier init.
    config.bias_init = 'zeros'
    # The first conv: 'lax' (cuDNN on a GPU), 'shifted_sum' (models.ShiftedSumConv: the same
    # parameters and values, faster on a GPU) or 'auto' (the faster one for the backend).
    config.first_conv = 'auto'
    return config


def data_defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.source = 'tfds'  # 'tfds' (downloads) or 'idx' (the four original IDX files).
    config.tfds_data_dir = ''  # TFDS cache; '' for TFDS's default (~/tensorflow_datasets).
    config.idx_dir = ''  # Directory of train-/t10k-images/labels IDX files (.gz or raw).
    config.image_size = 224  # Images are resized to this (bilinear) on the accelerator.
    config.max_train_examples = 0  # 0: the whole split; else the first N (smoke runs).
    config.max_test_examples = 0
    # Hold out the last N training examples (after max_train_examples) as a validation set:
    # training never sees them, and every epoch is evaluated on them beside the test set, so
    # that settings can be chosen without looking at the test set. 0: train on them all.
    config.validation_examples = 0
    return config


def train_defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_epochs = 5
    config.learning_rate = 0.05
    config.momentum = 0.0  # 0: plain SGD, as in the lesson.
    config.nesterov = False
    config.weight_decay = 0.0  # L2 on conv and dense kernels (not biases, not BN).
    config.lr_schedule = 'constant'  # 'constant', 'cosine' or 'step'.
    config.warmup_epochs = 0
    config.lr_decay_epochs = ()  # 'step' schedule: epochs at which lr is multiplied by...
    config.lr_decay_factor = 0.1  # ...this factor.
    config.checkpoint_every_epochs = 1
    config.keep_checkpoints = 3
    config.log_every_steps = 50  # Step log (steps.jsonl), progress and non-finite checks.
    # Steps per compiled call: above 1, they run under one compiled loop, saving a dispatch per
    # step where the step is tiny (small images on a GPU); on a CPU it is slower (see README).
    # The same steps, compiled differently: the metrics match a run of another value to float
    # rounding, not bit for bit, and a resume may change it (a run so resumed is reproduced by
    # the same launches, not by one uninterrupted run).
    config.steps_per_call = 1
    config.label_smoothing = 0.0  # 0: the lesson's plain cross-entropy.
    # Decay of an exponential moving average of the weights (and BatchNorm statistics) that
    # evaluation and checkpoints use; 0: none, evaluation uses the weights as trained.
    config.ema_decay = 0.0
    return config


class ConfigError(Exception):
    """An experiment file that does not load, or a config (a file's, a sweep point's) whose
    fields differ from the defaults', in one line. Not a ValueError, which absl's flag parsing
    would recast as its own error."""


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """The Python file at `path` (an experiment file), imported under its file's stem."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise ValueError(f'{path} is not a Python file that can be imported.')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def file_errors(path: str | os.PathLike) -> Iterator[None]:
    """Whatever the experiment file at `path` raises as it loads or runs, as a ConfigError
    naming the file."""
    try:
        yield
    except ConfigError:  # Of this file, or of the experiment it starts from.
        raise
    except Exception as e:
        lines = str(e).strip().splitlines()
        reason = lines[-1].strip() if lines else type(e).__name__
        raise ConfigError(f'the config file {path} does not load: {reason}') from e


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of the experiment file at `path`, `conformed` to the defaults: every way
    in which the file fails is a ConfigError naming it."""
    if not os.path.isfile(path):
        state = 'is a directory' if os.path.isdir(path) else 'does not exist'
        raise ConfigError(
            f'the config file {path} {state}; pass the path of an experiment config, e.g. '
            '--config=experiments/quick.py.'
        )
    with file_errors(path):
        get_config = getattr(load_module(path), 'get_config', None)
        if not callable(get_config):
            raise ConfigError(
                f'the config file {path} has no get_config(); define one that returns the '
                "experiment's config, as experiments/quick.py does."
            )
        config = get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        returned = 'None' if config is None else f'a {type(config).__name__}'
        raise ConfigError(
            f'{path}: get_config() returned {returned}, not a ConfigDict; start from '
            'config_utils.default_config() and return it.'
        )
    return conformed(config, str(path))


def experiment_config(beside: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the experiment file `name`.py in the directory of the file `beside`:
    a variant of an experiment starts from it and states only what differs."""
    return load_config(os.path.join(os.path.dirname(os.path.abspath(beside)), f'{name}.py'))


# What a field must hold, by the type of its default.
_KINDS = {
    bool: 'True or False',
    int: 'an integer',
    float: 'a number',
    str: 'a string',
    tuple: 'a tuple',
}


def conformed(config: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
    """`config` with exactly the fields of `default_config()`, each of its default's type, so
    that a misspelt field fails where `source` sets it instead of leaving its default in force.
    An int where a number is due becomes that float, and lists where a tuple is due tuples, as
    an override gives them; anything else is a ConfigError naming the field."""
    given = flatten(config.to_dict())
    if unknown := unknown_field(default_config(), given):
        field, close = unknown
        raise ConfigError(
            f'{source} sets config.{field}, which is not a config field'
            + (
                f'; did you mean config.{close}?'
                if close
                else '; config_utils.default_config() has every field.'
            )
        )
    result = default_config()
    values = {}
    for field, default in flatten(result.to_dict()).items():
        if field not in given:
            raise ConfigError(
                f'{source} has no config.{field}; start from config_utils.default_config(), '
                'which has every field.'
            )
        value, kind = given[field], type(default)
        if kind is float and type(value) is int:
            value = float(value)
        if kind is tuple and type(value) is list:
            value = tuple(value)
        if type(value) is not kind:
            raise ConfigError(
                f'{source} sets config.{field}={value!r}; it must be '
                f'{_KINDS.get(kind, f"a {kind.__name__}")}, as its default {default!r} is.'
            )
        values[field] = as_tuples(value)
    result.update_from_flattened_dict(values)
    return result


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


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields, other than `RESUMABLE_CHANGES`, whose values differ between two configs.

    `train.num_epochs` is one of those only under the cosine schedule, which spans the whole
    run: changing its length would change the learning rate of every step still to come. (The
    constant and step schedules and the warmup are defined in epochs from the start, so a longer
    run just continues them.)
    """
    saved_flat, current_flat = flatten(saved), flatten(current)
    keys = sorted(set(saved_flat) | set(current_flat))
    conflicts = [
        f'{key}: {saved_flat.get(key, "<absent>")!r} in the run, '
        f'{current_flat.get(key, "<absent>")!r} now'
        for key in keys
        if key not in RESUMABLE_CHANGES and saved_flat.get(key) != current_flat.get(key)
    ]
    epochs = (saved_flat.get('train.num_epochs'), current_flat.get('train.num_epochs'))
    if current_flat.get('train.lr_schedule') == 'cosine' and epochs[0] != epochs[1]:
        conflicts.append(
            f'train.num_epochs: {epochs[0]!r} in the run, {epochs[1]!r} now (the '
            "cosine schedule spans the run's epochs, so every step still to come "
            'would change)'
        )
    return conflicts


def unknown_field(
    config: ml_collections.ConfigDict, fields: Iterable[str]
) -> tuple[str, str | None] | None:
    """The first dotted field that `config` lacks, and the field it most likely meant."""
    known = flatten(to_plain(config))
    for field in fields:
        if field not in known:
            close = difflib.get_close_matches(field, known, n=1)
            return field, close[0] if close else None
    return None


def check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raises ValueError naming `config.<field>` and the allowed values."""
    if value not in allowed:
        raise ValueError(
            f'config.{field}={value!r} is not supported; use one of '
            f'{", ".join(map(repr, allowed))}.'
        )


def check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'config.{field}={value!r} must be a positive integer.')
