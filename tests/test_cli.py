"""The `energytok` console script: help, version, unknown commands, and every registered sub-command's help."""
import subprocess, sys
from pathlib import Path

import pytest

from energytok.cli import COMMANDS

EXE = str(Path(sys.executable).with_name('energytok'))


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=180)


def test_help_lists_every_command():
    res = run('--help')
    assert res.returncode == 0
    for name in COMMANDS: assert f'  {name} ' in res.stdout


def test_no_arguments_prints_usage_and_fails():
    res = run()
    assert res.returncode == 2 and 'usage: energytok' in res.stdout


def test_unknown_command():
    res = run('frobnicate')
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr


def test_version():
    import energytok
    res = run('--version')
    assert res.returncode == 0 and res.stdout.strip() == f'energytok {energytok.__version__}'


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_subcommand_help(name):
    res = run(name, '--help')
    assert res.returncode == 0, res.stderr
    assert f'usage: energytok {name}' in res.stdout
