"""Fault injection by class of defect: sensor faults, file-system errors, concurrent runs, hostile labels, bad input.

Every case asserts what a user sees (exit status, one line naming the parameter or path) and what is stored
(a failed sensor is never 0 J; no completed record is lost; nothing is written outside the output folder)."""
import contextlib, errno, io, json, math, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from energytok.cli import main
from energytok.meter import Meter
from energytok.sensors import ReplaySensor, Trace, Reading
from energytok.store import RunStore, load_runs, read_records, make_record, RUN_COLUMNS
from energytok.workload import Sweep, run_sweep

EXE = shutil.which('energytok') or str(Path(sys.executable).parent/'energytok')
TINY = ['--batch-size', '1', '--new-tokens', '8', '--prompt-tokens', '16', '--dtype', 'fp32', '--warmup', '0', '--quiet']


def cli(*argv) -> tuple:
    "(exit status, stdout, stderr) of `energytok ARGV` run in this process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(map(str, argv)))
    return rc, out.getvalue(), err.getvalue()


def one_line_error(err:str, *needles) -> bool:
    "The error output is one line, names every needle and is not a traceback."
    lines = [l for l in err.splitlines() if l.strip()]
    return len(lines) == 1 and 'Traceback' not in err and all(n in lines[0] for n in needles)


# ---- sensor faults: never a measured zero ----------------------------------------------------------------------------
class Faulty(ReplaySensor):
    "A 200 W replay sensor whose reads go wrong in a scripted way from `after_s` seconds after its first read."
    def __init__(self, fault, after_s=0.0, power=True):
        super().__init__(Trace([0, 1], [200.0, 200.0]), domain='gpu:0')
        self.fault, self.after_s, self.has_power = fault, after_s, power
        self.step = 0

    def read(self):
        r = super().read()
        p = r.power_w if self.has_power else None
        if r.t_s - self.t0_s < self.after_s: return Reading(r.t_s, r.energy_j, p)
        self.step += 1
        if self.fault == 'raises': raise RuntimeError('NVML: GPU is lost')
        if self.fault == 'nan': return Reading(r.t_s, energy_j=float('nan'), power_w=p)
        if self.fault == 'negative': return Reading(r.t_s, energy_j=r.energy_j, power_w=-5.0)
        if self.fault == 'falls': return Reading(r.t_s, energy_j=r.energy_j - 10.0 * self.step, power_w=p)  # falls at every read
        raise AssertionError(self.fault)


@pytest.mark.parametrize('fault,power', [('raises', True), ('nan', True), ('negative', True), ('falls', False)])
def test_a_sweep_on_a_failed_sensor_stores_missing_energy_not_zero(tmp_path, fault, power):
    sweep = Sweep({'batch_size': [1, 2]}, repetitions=2, warmup=0, name='faulty',
                  base=dict(new_tokens=8, prompt_tokens=16, threads=1))
    run_sweep(sweep, tmp_path, meter=Meter([Faulty(fault, power=power)], period_s=0.005), progress=False)
    recs = read_records(tmp_path/sweep.sweep_id/'runs.jsonl')[0]
    assert len(recs) == 4
    for r in recs:
        assert r['energy_j'] is None and r['j_per_token'] is None and r['j_per_token_pue'] is None
        assert r['energy_by_domain_j'] == {'gpu:0': None} and r['avg_power_w'] is None
        assert r['estimated'] is False and 'missing:replay' in r['energy_provenance']
        assert r['flags'][0].startswith('energy-missing: gpu:0 gave no valid reading')
        assert r['decode_tokens'] > 0  # the tokens were still counted
    df = load_runs(tmp_path)
    assert df['j_per_token'].isna().all() and not (df['energy_j'] == 0).any()


@pytest.mark.parametrize('fault', ['raises', 'nan', 'negative'])
def test_a_sensor_that_fails_mid_window_gives_missing_energy(fault):
    s = Faulty(fault, after_s=0.15)
    with Meter([s], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.3)
    r = w.result
    assert r.energy_j is None and r.energy_by_domain_j == {'gpu:0': None} and r.provenance == {'gpu:0': 'missing:replay'}
    assert any(f.startswith('energy-missing:gpu:0: no valid reading at or near the end') for f in r.flags)
    assert any(f.startswith('sensor-error:gpu:0') for f in r.flags)


def test_a_counter_that_falls_mid_window_falls_back_to_polled_power():
    s = Faulty('falls', after_s=0.15)
    with Meter([s], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.3)
    r = w.result
    assert 'gpu:0' not in r.counter_energy_by_domain_j  # the counter cannot be trusted across a fall
    assert r.energy_j == pytest.approx(200.0 * r.duration_s, rel=0.02) and r.provenance == {'gpu:0': 'replay'}
    assert any(f.startswith('counter-reset:gpu:0') for f in r.flags)


def test_a_sensor_that_recovers_mid_window_is_bridged_and_flagged():
    class Gap(ReplaySensor):
        broken = False
        def read(self):
            if self.broken: raise RuntimeError('busy')
            return super().read()
    s = Gap(Trace([0, 1], [200.0, 200.0]), domain='gpu:0')
    with Meter([s], period_s=0.01) as m:
        with m.window('w') as w:
            time.sleep(0.1); s.broken = True; time.sleep(0.1); s.broken = False; time.sleep(0.1)
    r = w.result
    assert r.energy_j == pytest.approx(200.0 * r.duration_s, rel=0.01)  # the counter covers the gap
    assert {'sensor-error', 'sampling-gap'} <= {f.split(':')[0] for f in r.flags}


def test_report_on_runs_whose_sensor_failed_says_so(tmp_path):
    sweep = Sweep({'batch_size': [1, 2]}, repetitions=3, warmup=0, name='faulty',
                  base=dict(new_tokens=8, prompt_tokens=16, threads=1))
    run_sweep(sweep, tmp_path, meter=Meter([Faulty('raises')], period_s=0.005), progress=False)
    rc, out, err = cli('report', tmp_path, '--out', tmp_path/'report', '--no-figures')
    assert 'Traceback' not in err
    assert rc != 0 or 'energy' in out  # either refused in one line or reported with the missing runs named
    if rc != 0: assert one_line_error(err)


# ---- file-system errors: one line naming the path, exit 1, nothing lost ---------------------------------------------
def test_out_that_is_a_file(tmp_path):
    f = tmp_path/'results'; f.write_text('a file')
    rc, out, err = cli('run', *TINY, '--repetitions', '1', '--out', f)
    assert rc == 1 and one_line_error(err, str(f), 'ENOTDIR')


def test_name_too_long_for_the_file_system(tmp_path):
    out = tmp_path/('x' * 300)
    rc, _, err = cli('run', *TINY, '--repetitions', '1', '--out', out)
    assert rc == 1 and one_line_error(err, 'ENAMETOOLONG')


def test_report_into_a_file(tmp_path):
    runs = tmp_path/'runs.csv'
    pd.DataFrame(dict(cfg=['a'] * 5 + ['b'] * 5, y=np.linspace(1, 2, 10))).to_csv(runs, index=False)
    target = tmp_path/'report'; target.write_text('x')
    rc, _, err = cli('compare', runs, '--metric', 'y', '--by', 'cfg', '--out', target)
    assert rc == 1 and one_line_error(err, str(target))


@contextlib.contextmanager
def tmpfs(path, size, ro=False):
    "Mount a tmpfs of `size` at `path` (skip the test where this process may not mount one)."
    path.mkdir(parents=True, exist_ok=True)
    opts = f'size={size}' + (',ro' if ro else '')
    p = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(path)], capture_output=True, text=True)
    if p.returncode != 0: pytest.skip(f'cannot mount a tmpfs here: {p.stderr.strip()}')
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)


def test_read_only_file_system(tmp_path):
    with tmpfs(tmp_path/'ro', '1m', ro=True) as ro:
        rc, _, err = cli('run', *TINY, '--repetitions', '1', '--out', ro/'results')
        assert rc == 1 and one_line_error(err, str(ro/'results'), 'EROFS')


def test_full_disk_keeps_every_completed_record(tmp_path):
    with tmpfs(tmp_path/'small', '256k') as disk:
        fd = os.open(disk/'filler', os.O_WRONLY | os.O_CREAT)  # fill the disk (256k: room for 16 records and their outputs.jsonl once freed), then leave room for the manifest and a few records
        try:
            while True: os.write(fd, b'\0' * 4096)
        except OSError: pass
        finally: os.close(fd)
        os.truncate(disk/'filler', os.path.getsize(disk/'filler') - 7 * 4096)
        rc, out, err = cli('run', *TINY, '--batch-size', '1,2', '--repetitions', '8', '--out', disk/'results')
        assert rc == 1 and one_line_error(err, 'ENOSPC', 'runs.jsonl'), err
        runs = next((disk/'results').glob('*/runs.jsonl'))
        assert runs.read_bytes().endswith(b'\n')  # no half record left behind
        recs, bad = read_records(runs)
        assert bad == 0 and len(recs) >= 1 and all(r['decode_tokens'] for r in recs)
        os.remove(disk/'filler')  # room again: the same command resumes and completes
        rc, out, err = cli('run', *TINY, '--batch-size', '1,2', '--repetitions', '8', '--out', disk/'results')
        assert rc == 0, err
        assert len(read_records(runs)[0]) == 16


def test_permission_denied_as_an_unprivileged_user(tmp_path):
    if os.geteuid() != 0 or not shutil.which('setpriv'): pytest.skip('needs root and setpriv to run as another user')
    locked = tmp_path/'locked'; locked.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    nobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
    env = {**os.environ, 'HOME': '/tmp'}
    probe = subprocess.run(nobody + [EXE, '--version'], capture_output=True, text=True, timeout=120, env=env)
    if probe.returncode != 0: pytest.skip(f'the unprivileged user cannot run energytok here (its venv is private): {probe.stderr[-200:]}')
    p = subprocess.run(nobody + [EXE, 'run', *TINY, '--repetitions', '1', '--out', str(locked/'results')],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1 and one_line_error(p.stderr, str(locked/'results'), 'EACCES'), p.stderr


def test_failed_report_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    runs = tmp_path/'runs.csv'
    pd.DataFrame(dict(cfg=['a'] * 5 + ['b'] * 5, y=np.linspace(1, 2, 10))).to_csv(runs, index=False)
    assert cli('compare', runs, '--metric', 'y', '--by', 'cfg', '--out', tmp_path/'r')[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path/'r').iterdir() if p.is_file()}
    real = os.replace
    def full(src, dst):  # the disk fills up while the report is being written
        if str(dst).endswith('report.html'): raise OSError(errno.ENOSPC, 'No space left on device')
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', full)
    rc, _, err = cli('compare', runs, '--metric', 'y', '--by', 'cfg', '--out', tmp_path/'r')
    assert rc == 1 and one_line_error(err, 'report.html', 'ENOSPC')
    after = {p.name: p.read_bytes() for p in (tmp_path/'r').iterdir() if p.is_file()}
    assert after['report.html'] == before['report.html'] and all(after.values())  # no empty file
    assert not [p for p in (tmp_path/'r').iterdir() if p.name.startswith('.tmp-')]


# ---- names that would leave the output folder ----------------------------------------------------------------------
@pytest.mark.parametrize('name', ['../../etc', 'a/b', '..', '.hidden', 'x' * 65, 'a b', ''])
def test_sweep_names_cannot_leave_the_output_folder(tmp_path, name):
    out = tmp_path/'out'/'results'
    rc, _, err = cli('run', *TINY, '--repetitions', '1', '--out', out, '--name', name)
    assert rc == 2 and one_line_error(err, 'name: expected 1 to')
    assert not (tmp_path/'out').exists() and not (tmp_path/'etc').exists()


# ---- two processes on one sweep -------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_sweep_is_refused_naming_the_holder(tmp_path):
    args = [EXE, 'run', *TINY, '--repetitions', '50', '--cooldown-s', '0.2', '--out', str(tmp_path)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        lock = None
        while time.monotonic() < deadline and first.poll() is None:
            lock = next(tmp_path.glob('*/runs.jsonl'), None)
            if lock is not None: break  # the first run is measuring, holding the lock
            time.sleep(0.2)
        assert lock is not None, first.communicate()
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and one_line_error(second.stderr, 'in use by another energytok process', f'pid {first.pid}')
        first.send_signal(signal.SIGKILL); first.wait()
        n_before = len(read_records(lock)[0])
        third = subprocess.run(args[:-2] + ['--repetitions', '50', '--cooldown-s', '0', '--out', str(tmp_path)],
                               capture_output=True, text=True, timeout=300)  # the kernel released the killed run's lock
        assert third.returncode == 0, third.stderr
        recs = read_records(lock)[0]
        assert len(recs) == 50 and len({r['run_id'] for r in recs}) == 50 and n_before >= 1
    finally:
        if first.poll() is None: first.kill()


# ---- hostile labels ------------------------------------------------------------------------------------------------
HOSTILE = ['a\n![x](javascript:alert(1))', '<script>alert(1)</script>', '**bold** `code` | pipe', '$\\frac{1}{0}$ ' * 500]


def check_safe(folder:Path):
    page = (folder/'report.html').read_text()
    assert "default-src 'none'; img-src data:" in page
    assert '<script' not in page and 'javascript:alert(1)"' not in page
    assert all(src.startswith('data:image/png;base64,') for src in re.findall(r'<img src="([^"]*)"', page))
    md = (folder/'report.md').read_text()
    assert '![x](javascript' not in md and '<script>' not in md
    for line in md.splitlines():  # every table row kept its cells
        if line.startswith('|') and line.count('|') >= 3: assert line.rstrip().endswith('|')
    return page


def test_hostile_labels_in_a_csv_through_compare(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(dict(cfg=np.repeat(HOSTILE[:3] + ['plain'], 10), y=rng.lognormal(0, 0.1, 40),
                           tokens_per_s=rng.lognormal(3, 0.1, 40)))
    df.to_csv(tmp_path/'hostile.csv', index=False)
    p = subprocess.run([EXE, 'compare', str(tmp_path/'hostile.csv'), '--metric', 'y', '--by', 'cfg', '--out', str(tmp_path/'r')],
                       capture_output=True, text=True, timeout=300)  # used to draw figures forever
    assert p.returncode == 0, p.stderr
    page = check_safe(tmp_path/'r')
    assert '&lt;script&gt;' in page and page.count('<tr>') > 8


def test_hostile_labels_in_run_records_through_report(tmp_path):
    from energytok.card import simulated_records
    from energytok.stats_describe import simulate_runs
    recs = simulated_records(simulate_runs(n_reps=4, seed=2), model=HOSTILE[0], device_name=HOSTILE[1])
    recs['dtype'] = recs['dtype'].map({'fp32': HOSTILE[3], 'bf16': HOSTILE[2]})
    store = RunStore(tmp_path/'runs'/'runs.jsonl')
    for r in recs.to_dict(orient='records'): store.append(r)
    rc, out, err = cli('report', tmp_path/'runs', '--out', tmp_path/'r')
    assert rc == 0, err
    check_safe(tmp_path/'r')


# ---- bad input refused before anything runs -------------------------------------------------------------------------
BAD_RUN = [
    (['--max-ttft-s', '0'], 'max_ttft_s: expected a finite number > 0'),
    (['--max-tpot-s', '-1'], 'max_tpot_s: expected a finite number > 0'),
    (['--batch-size', '1,1'], "factors['batch_size']: level(s) [1] given more than once"),
    (['--dtype', 'fp32,fp32'], "factors['dtype']: level(s) ['fp32'] given more than once"),
    (['--pue', '1e308'], 'pue: expected a value in [1, 10]'),
    (['--pue', 'nan'], 'pue: expected a finite number'),
    (['--max-loss', '-1'], 'max_loss: expected a finite number > 0'),
    (['--batch-size', '100000000'], 'batch_size: expected a whole number in [1, 65,536]'),
    (['--batch-size', '65536', '--prompt-tokens', '128', '--new-tokens', '128'], 'needs about'),
    (['--idle-s', '1e9'], 'idle_s: expected a value in [0, 3600]'),
    (['--cooldown-s', '-1'], 'cooldown_s: expected a value in [0, 3600]'),
    (['--repetitions', '1000000000'], 'repetitions: expected a whole number in [1, 100,000]'),
    (['--warmup', '-1'], 'warmup: expected a whole number in [0, 1,000]'),
    (['--threads', '0'], 'threads: expected a whole number in [1, 4,096]'),
    (['--new-tokens', '0'], 'new_tokens: expected a whole number in [1, 1,048,576]'),
    (['--prompt-tokens', '300'], 'prompt_tokens + new_tokens: expected at most 256'),
    (['--device', 'tpu'], 'device: expected one of'),
    (['--device', 'cuda:9'], 'is not available here'),
    (['--quantization', 'int4'], 'quantization: expected one of'),
    (['--model', '/no/such/folder'], "model: '/no/such/folder' is neither"),
]


@pytest.mark.parametrize('args,msg', BAD_RUN)
def test_bad_run_flags_are_refused_naming_the_parameter(tmp_path, args, msg):
    rc, _, err = cli('run', *TINY, '--repetitions', '1', *args, '--out', tmp_path/'results')
    assert rc == 2 and one_line_error(err, msg), err
    assert not (tmp_path/'results').exists()


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


BAD_TABLES = [
    (b'', 'is empty; expected a header row'),
    (bytes(range(256)) * 4, 'is not a UTF-8 text table'),
    (b'cfg,y,y\na,1,2\na,1,2\nb,2,3\nb,3,4\n', "has the column(s) ['y'] more than once"),
    (b'cfg,y\na,1\na,1\nb,1\nb,1\n', 'no variation'),
]


@pytest.mark.parametrize('data,msg', BAD_TABLES)
def test_bad_tables_are_refused_in_one_line(tmp_path, data, msg):
    rc, out, err = cli('compare', write(tmp_path/'t.csv', data), '--metric', 'y', '--by', 'cfg')
    if msg == 'no variation':  # all values equal: not refused, but no F from rounding noise either
        assert 'Traceback' not in err and ('no variation' in (out + err).lower()), out + err
        return
    assert rc == 2 and one_line_error(err, str(tmp_path/'t.csv'), msg), err


BAD_TPF = [
    (['--n-devices', '0'], 'n_devices: expected a whole number'),
    (['--n-devices', '0', '--throughput', '100', '--power-w', '300', '--active-params', '8e9'], 'n_devices: expected a whole number'),
    (['--active-params', '-1', '--throughput', '100', '--power-w', '300'], 'active_params'),
    (['--active-params', 'nan', '--throughput', '100', '--power-w', '300'], 'active_params'),
    (['--pue', '0.5', '--facility-power-w', '1e6', '--active-params', '8e9', '--e-tok', '0.1'], 'pue: expected a value in [1, 10]'),
]


@pytest.mark.parametrize('args,msg', BAD_TPF)
def test_bad_tpf_flags_name_the_parameter(args, msg):
    rc, _, err = cli('tpf', *args)
    assert rc == 2 and one_line_error(err, msg), err


def test_bad_spec_file_names_the_file(tmp_path):
    rc, _, err = cli('tpf', '--spec', write(tmp_path/'bad.toml', 'x = '))
    assert rc == 2 and one_line_error(err, str(tmp_path/'bad.toml')), err
    rc, _, err = cli('tpf', '--spec', write(tmp_path/'bad.json', '{"a": '))
    assert rc == 2 and one_line_error(err, str(tmp_path/'bad.json')), err


def test_report_flags_refused(tmp_path):
    from energytok.card import simulated_records
    store = RunStore(tmp_path/'runs'/'runs.jsonl')
    for r in simulated_records().to_dict(orient='records'): store.append(r)
    for args, msg in ((['--active-params', '-1'], 'active_params'), (['--active-params', 'nan'], 'active_params'),
                      (['--alpha', '2'], 'alpha'), (['--margin', '-0.1'], 'margin')):
        rc, _, err = cli('report', tmp_path/'runs', '--out', tmp_path/'r', '--no-figures', *args)
        assert rc == 2 and one_line_error(err, msg), (args, err)


def test_ctrl_c_during_start_up_prints_one_line(tmp_path):
    p = subprocess.Popen([EXE, 'run', *TINY, '--repetitions', '1', '--out', str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # importing torch
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode in (130, -signal.SIGINT) and 'Traceback' not in err, err
    if p.returncode == 130: assert one_line_error(err, 'interrupted')


def test_broken_pipe_is_quiet(tmp_path):
    pd.DataFrame(dict(cfg=['a'] * 5 + ['b'] * 5, y=np.linspace(1, 2, 10))).to_csv(tmp_path/'t.csv', index=False)
    p = subprocess.run(f"'{EXE}' compare '{tmp_path/'t.csv'}' --metric y --by cfg | head -1", shell=True,
                       capture_output=True, text=True, timeout=300)
    assert 'Traceback' not in p.stderr and 'BrokenPipe' not in p.stderr, p.stderr


def test_permission_denied_for_a_report_in_process():
    if os.geteuid() != 0: pytest.skip('needs root to act as another user')
    import tempfile
    top = Path(tempfile.mkdtemp(dir='/tmp'))  # outside pytest's private folder, so another user can read the table
    try:
        top.chmod(0o755)
        pd.DataFrame(dict(cfg=['a'] * 5 + ['b'] * 5, y=np.linspace(1, 2, 10))).to_csv(top/'t.csv', index=False)
        (top/'t.csv').chmod(0o644)
        locked = top/'locked'; locked.mkdir(mode=0o755)
        assert cli('compare', top/'t.csv', '--metric', 'y', '--by', 'cfg', '--out', top/'warm')[0] == 0  # every import done as root
        os.seteuid(65534)  # this process's file access as nobody: the folder is root's and not writable by others
        try: rc, _, err = cli('compare', top/'t.csv', '--metric', 'y', '--by', 'cfg', '--out', locked/'report')
        finally: os.seteuid(0)
        assert rc == 1 and one_line_error(err, str(locked/'report'), 'EACCES'), err
        assert not list(locked.iterdir())
    finally: shutil.rmtree(top)
