"""A config too large for the memory the process may use is one line naming the fix, before
anything runs."""

from __future__ import annotations

import os
import resource

import pytest

from vgg_flax import validation

from conftest import tiny_config


def test_a_process_memory_limit_below_the_step_is_one_line_before_anything_runs(monkeypatch):
    with open('/proc/self/statm') as f:  # The address space in use, in pages.
        used = int(f.read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
    limit = used + 3 * 2**29  # 1.5 GiB more than the process uses.
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (limit, resource.RLIM_INFINITY))
    config = tiny_config('unread')
    config.data.image_size = 1024  # 32 x 1024 x 1024 x 4 channels of float32: 0.5 GiB.
    validation.validate_config(config)  # Fits what the process may still allocate...
    config.data.image_size = 2048  # ...this, 2 GiB, does not.
    with pytest.raises(ValueError) as error:
        validation.validate_config(config)
    message = str(error.value)
    assert message.startswith('config.data.image_size=2048 needs at least 2.0 GiB for the first ')
    assert "GiB of address space left under the process's limit (ulimit -v); lower " in message
    assert message.endswith('or config.train.batch_size, or raise that limit.')
