"`energytok run` end to end: a real process in a temporary folder, resume, kill -9 mid-sweep, bad flags."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from energytok.store import load_runs, read_records

EXE = str(Path(sys.executable).parent/'energytok')
SMALL = ['--batch-size', '1,2', '--prompt-tokens', '32', '--new-tokens', '16', '--repetitions', '2', '--quiet']


def run(args, cwd):
    return subprocess.run([EXE, 'run', *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_end_to_end_then_resume(tmp_path):
    p = run(SMALL, tmp_path)
    assert p.returncode == 0, p.stderr
    folders = list((tmp_path/'results').iterdir())
    assert len(folders) == 1 and folders[0].name.startswith('run-')
    df = load_runs(folders[0]/'runs.jsonl')
    assert len(df) == 2 * 2 * 2 and df.run_id.is_unique
    assert set(df.dtype) == {'fp32', 'bf16'} and set(df.batch_size) == {1, 2}
    assert set(df.decode_tokens) == {16, 32}
    assert folders[0].name in p.stdout and '8 runs measured' in p.stdout
    for col in ('J/token', 'tok/s', 'TTFT ms', 'TPOT ms', 'energy: '): assert col in p.stdout
    assert all(len(line) <= 100 for line in p.stdout.splitlines())
    if df.estimated.any():  # no power sensor here: it must say so in words
        assert 'ESTIMATED' in p.stdout and 'estimate:' in p.stdout
    again = run(SMALL, tmp_path)
    assert again.returncode == 0 and 'resumed: 8 of 8 runs were already on disk' in again.stdout and '--new' in again.stdout
    assert len(load_runs(folders[0])) == 8
    fresh = run(SMALL + ['--new', '--repetitions', '1'], tmp_path)
    assert fresh.returncode == 0 and len(list((tmp_path/'results').iterdir())) == 2


def test_kill_9_mid_sweep_then_resume(tmp_path):
    args = ['--batch-size', '1', '--dtype', 'fp32', '--prompt-tokens', '32', '--new-tokens', '32', '--repetitions', '12',
            '--cooldown-s', '0.25', '--quiet', '--out', 'res']
    proc = subprocess.Popen([EXE, 'run', *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    runs = None
    while time.time() - t0 < 120:
        found = list((tmp_path/'res').glob('*/runs.jsonl'))
        if found and len(read_records(found[0])[0]) >= 3: runs = found[0]; break
        time.sleep(0.05)
    assert runs is not None, 'the sweep never wrote three records'
    time.sleep(0.1)  # land somewhere inside a later run
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    before, bad = read_records(runs)
    assert bad == 0 and 3 <= len(before) < 12, 'the kill should land mid-sweep'
    p = run(args, tmp_path)
    assert p.returncode == 0, p.stderr
    after, bad = read_records(runs)
    assert bad == 0 and len(after) == 12
    assert after[:len(before)] == before  # nothing written before the kill changed or was lost
    assert len({r['run_id'] for r in after}) == 12  # no duplicates
    assert f'resumed: {len(before)} of 12 runs were already on disk and are reused, {12 - len(before)} measured now' in p.stdout
    man = json.loads((runs.parent/'sweep.json').read_text())
    assert sorted(r['run_id'] for r in after) == sorted(o['run_id'] for o in man['order'])


@pytest.mark.parametrize('args,msg', [
    (['--dtype', 'fp32,fp9'], "dtype: expected one of"),
    (['--batch-size', '0'], 'batch_size: expected a whole number in [1, 65,536], got 0'),
    (['--batch-size', 'eight'], '--batch-size: expected int values'),
    (['--dtype', 'fp16', '--device', 'cpu'], "'fp16' is not supported on device 'cpu'"),
    (['--model', 'no-such-model'], "model: 'no-such-model' is neither"),
    (['--pue', '0.7'], 'pue: expected a value in [1, 10]'),
    (['--repetitions', '0'], 'repetitions: expected a whole number in [1, 100,000]'),
])
def test_bad_flags_fail_before_anything_runs(tmp_path, capsys, args, msg):
    from energytok.cli import main
    assert main(['run', *args, '--out', str(tmp_path/'results')]) == 2  # in-process: the same code path, no interpreter start
    assert msg in capsys.readouterr().err
    assert not (tmp_path/'results').exists()


def test_bad_flag_exit_status_from_the_installed_command(tmp_path):
    p = run(['--batch-size', '0'], tmp_path)
    assert p.returncode == 2 and 'batch_size: expected a whole number in [1, 65,536], got 0' in p.stderr
    assert not (tmp_path/'results').exists()


def test_help_lists_the_flags(tmp_path):
    p = subprocess.run([EXE, 'run', '--help'], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ('--model', '--dtype', '--batch-size', '--repetitions', '--pue', '--out', '--quantization', '--max-loss'):
        assert flag in p.stdout


def test_ctrl_c_keeps_completed_runs_and_says_how_to_resume(tmp_path):
    args = ['--batch-size', '1', '--dtype', 'fp32', '--prompt-tokens', '16', '--new-tokens', '16', '--repetitions', '20',
            '--cooldown-s', '0.2', '--quiet', '--out', 'res']
    proc = subprocess.Popen([EXE, 'run', *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, runs = time.time(), None
    while time.time() - t0 < 120:
        found = list((tmp_path/'res').glob('*/runs.jsonl'))
        if found and len(read_records(found[0])[0]) >= 2: runs = found[0]; break
        time.sleep(0.05)
    assert runs is not None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'run the same command to resume' in err
    recs, bad = read_records(runs)
    assert bad == 0 and 2 <= len(recs) < 20


def test_model_folder_without_transformers_refused(tmp_path):
    try:
        import transformers  # noqa: F401
        pytest.skip('transformers is installed')
    except ImportError: pass
    (tmp_path/'hf').mkdir(); (tmp_path/'hf'/'config.json').write_text('{}')
    p = run(['--model', str(tmp_path/'hf')], tmp_path)
    assert p.returncode == 2 and 'needs the `transformers` package' in p.stderr
    assert not (tmp_path/'results').exists()
