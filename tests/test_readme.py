"""Every command in the bash blocks of the README and docs/ runs as written, at tiny sizes on small
IDX files.

The commands that share a workdir run in the README's order, each group in a sandbox of its own
(so that the groups can run on separate workers). The `python -m vgg_flax.X` commands run in this
process (`run_cli`), a whole sweep's command on its last point only; the scripts run as they are,
in a copy of the repository's layout whose `.venv` and `python3` are this interpreter (the
scripts' `pip install` is skipped: this environment has the pinned packages already).
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_CONV_ARCH, write_fashion_idx_dir

# What the guides' commands name the data's directory (`DATA=...` in a line above them).
README_DATA_DIR = '/path/to/fashion-mnist'
GUIDES = (ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md')))


def expand(assignments: list[str], line: str) -> list[str]:
    """The words that bash makes of `line` after the guide's `NAME=value` lines above it."""
    script = '\n'.join([*assignments, f'set -- {line}', 'printf "%s\\0" "$@"'])
    done = subprocess.run(
        ['bash', '-c', script],
        capture_output=True,
        text=True,
        check=True,
        env={'PATH': os.environ['PATH'], 'SLURM_ARRAY_TASK_ID': '0'},
    )
    return done.stdout.split('\0')[:-1]


@functools.cache
def readme_commands() -> list[list[str]]:
    """Each command of the README's and the docs' bash blocks as bash expands it (continuations
    joined, comments dropped, variables set by the guide's lines above it); the SLURM scripts'
    `srun` lines without `srun`."""
    commands = []
    for guide in GUIDES:
        assignments: list[str] = []
        for block in re.findall(r'```bash\n(.*?)```', guide.read_text(), re.S):
            for line in block.replace('\\\n', ' ').splitlines():
                words = shlex.split(line, comments=True)
                if words and all(re.fullmatch(r'[A-Z_]+=.*', word) for word in words):
                    assignments.append(line)
                elif words:
                    words = expand(assignments, line)
                    commands.append(words[1:] if words[:1] == ['srun'] else words)
    return commands


def readme_groups() -> dict[str, list[list[str]]]:
    """The commands to run (all but the suite's own and the environment's activation), grouped
    by the workdir they use (scripts/train.sh's default on a CPU is runs/quick); a command with
    none is a group of its own."""
    groups: dict[str, list[list[str]]] = {}
    for words in readme_commands():
        if words[:2] == ['bash', 'scripts/test.sh'] or words[0] == 'source':
            continue  # The suite this test is part of; the .venv this test runs in.
        workdir = next(
            (word.split('=', 1)[1] for word in words if word.startswith('--workdir=')), None
        )
        if workdir is None and words[:2] == ['bash', 'scripts/train.sh']:
            workdir = 'runs/quick'
        groups.setdefault(workdir or ' '.join(words), []).append(words)
    return groups


def tiny(idx_dir: pathlib.Path) -> list[str]:
    """Overrides that shrink any training command to seconds (they come last, so they win)."""
    return [
        '--config.data.source=idx',
        f'--config.data.idx_dir={idx_dir}',
        '--config.data.image_size=32',
        '--config.model.width_ratio=16',
        f'--config.model.conv_arch={TINY_CONV_ARCH}'.replace(' ', ''),  # One word.
        '--config.model.dense_features=(64,64)',
        '--config.train.batch_size=32',
        '--config.train.eval_batch_size=50',
        '--config.train.num_epochs=1',
        '--config.data.max_train_examples=32',
        '--config.data.max_test_examples=50',
    ]


def executable(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def sandbox(tmp_path: pathlib.Path) -> pathlib.Path:
    """The repository's layout for the scripts, with this interpreter as .venv's and python3."""
    root = tmp_path / 'repo'
    for directory in ('scripts', 'benchmarks'):
        shutil.copytree(ROOT / directory, root / directory)
    for name in ('requirements.txt', 'requirements-cpu.txt', 'setup.cfg', 'pyproject.toml'):
        shutil.copy(ROOT / name, root / name)
    (root / 'experiments').symlink_to(ROOT / 'experiments')
    python = f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 0\nexec {sys.executable} "$@"\n'
    executable(root / '.venv' / 'bin' / 'python', python)
    executable(tmp_path / 'bin' / 'python3', python)
    return root


def test_the_readme_has_the_commands_this_test_knows():
    kinds = {
        ' '.join(words[:3]) if words[0] != 'bash' else ' '.join(words[:2])
        for words in readme_commands()
    }
    assert kinds == {
        'bash scripts/train.sh',
        'bash scripts/test.sh',
        'source .venv/bin/activate',
        'python -m vgg_flax.main',
        'python -m vgg_flax.evaluate',
        'python -m vgg_flax.sweep',
        '.venv/bin/python -m vgg_flax.sweep',
        '.venv/bin/python -m vgg_flax.main',
        'python -m vgg_flax.benchmark',
        'python -m vgg_flax.summary',
        'DATA_DIR=/path/to/fashion-mnist OUT=gpu_results bash',
    }


@pytest.mark.slow
@pytest.mark.parametrize('group', list(readme_groups()))
def test_every_readme_command_runs(group, sandbox, tmp_path, monkeypatch, run_cli):
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx')
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
    for words in readme_groups()[group]:
        words = [word.replace(README_DATA_DIR, str(idx_dir)) for word in words]
        if words[:2] == ['bash', 'scripts/train.sh']:
            done = subprocess.run(
                [*words, *tiny(idx_dir)], capture_output=True, text=True, timeout=600
            )
        elif 'bash' in words:  # The GPU script's training stage, on this CPU.
            position = words.index('bash')
            env = dict(
                os.environ,
                **dict(word.split('=', 1) for word in words[:position]),
                STAGES='train_bfloat16',
                EXTRA_FLAGS=' '.join(tiny(idx_dir)[2:]),
            )
            done = subprocess.run(
                words[position:], capture_output=True, text=True, timeout=600, env=env
            )
            summary = (sandbox / env['OUT'] / 'summary.txt').read_text()
            assert 'FAILED' not in summary and 'train bfloat16: 1 epochs' in summary, summary
        else:
            module_name = words[words.index('-m') + 1]
            module = importlib.import_module(module_name)
            # Evaluating, summarising and a sweep's --list or --report without --config (which
            # read the sweep's record) take seconds as written: only training is shrunk.
            as_written = module_name in ('vgg_flax.evaluate', 'vgg_flax.summary') or (
                module_name == 'vgg_flax.sweep'
                and not any(word.startswith('--config=') for word in words)
            )
            extra = [] if as_written else tiny(idx_dir)
            if module_name == 'vgg_flax.benchmark':
                extra += ['--steps=2', '--repeats=1', '--warmup=1', '--loop_steps=0']
            if module_name == 'vgg_flax.sweep' and not any(
                word.startswith(('--index', '--list', '--report')) for word in words
            ):
                config = next(
                    word.split('=', 1)[1] for word in words if word.startswith('--config=')
                )
                # Its last point: the others are the same code with other values.
                extra.append(f'--index={len(module.load_sweep(config)) - 1}')
            done = run_cli(module, *words[words.index('-m') + 2 :], *extra)
        if '--report' in words:  # Of a sweep run on some points: it says the rest are not.
            assert re.fullmatch(r'\d+ point\(s\) not done.\n', done.stderr), done.stderr
        else:
            assert done.returncode == 0, (words, done.stdout[-2000:], done.stderr[-3000:])
    expected = {
        'runs/quick': 'results.json',
        'runs/d2l': 'results.json',
        'runs/ratio_32px': 'results.md',
    }.get(group)
    assert expected is None or (sandbox / group / expected).is_file()


def test_the_groups_hold_every_command_once():
    grouped = [words for group in readme_groups().values() for words in group]
    assert sorted(grouped) == sorted(
        words
        for words in readme_commands()
        if words[:2] != ['bash', 'scripts/test.sh'] and words[0] != 'source'
    )
    for trained in ('runs/quick_lr', 'runs/d2l'):  # The README's run, and docs/runs.md's.
        assert readme_groups()[trained][-1][:3] == ['python', '-m', 'vgg_flax.evaluate']
