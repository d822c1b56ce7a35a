"""benchmarks/gpu_validation.py and .sh without a GPU: a clear exit where none is visible; the one-command wrapper's
dry run through the FakeNVML stand-ins (files, sections, the 8-file limit); and the parts that decide what a GPU
run reports: sections that fail alone, the time budget inside loops, the idle settle, the scope check and the
ML.ENERGY comparison."""
import csv, importlib.util, json, os, statistics, subprocess, sys, time
from pathlib import Path

import pynvml
import pytest

from energytok.meter import Meter
from energytok.nvml import FakeNVML, gpu_sensors
from energytok.sensors import Trace

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_validation.py'
SHELL = ROOT / 'benchmarks' / 'gpu_validation.sh'
REFERENCE = ROOT.parent / 'shared' / 'reference' / 'mlenergy_llm_v3.csv'

spec = importlib.util.spec_from_file_location('gpu_validation', SCRIPT)
gv = importlib.util.module_from_spec(spec); spec.loader.exec_module(gv)


def has_nvidia_gpu():
    try: pynvml.nvmlInit(); return pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError: return False


@pytest.mark.skipif(has_nvidia_gpu(), reason='an NVIDIA GPU is visible')
def test_exits_with_a_clear_message_without_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path/'out')], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert 'no NVIDIA GPU visible' in res.stderr and 'NVML' in res.stderr
    assert not (tmp_path/'out').exists()


def test_shell_wrapper_dry_run_writes_every_output_within_the_limits(tmp_path):
    "The one command, as on the device machine (no wheels needed here: this environment has energytok's needs)."
    out, empty = tmp_path / 'out', tmp_path / 'no-wheels'
    empty.mkdir()
    env = {**os.environ, 'OUT': str(out), 'GPU_VALIDATION_WHEELS': str(empty), 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t = time.monotonic()
    res = subprocess.run(['bash', str(SHELL), '--dry-run-fake', '--quick'], capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert time.monotonic() - t < 480
    files = {p.name for p in out.iterdir()}
    assert {'results.json', 'windows.csv', 'overhead.csv', 'trace_matmul.csv', 'model.csv', 'log.txt'} <= files and len(files) <= 8
    log = (out / 'log.txt').read_text()
    assert 'DRY RUN' in log and 'energytok 0.' in log and f'{len(files)} files in' in log
    results = json.loads((out / 'results.json').read_text())
    assert results['environment']['dry_run'] is True
    st = results['sections']
    assert all(st[s]['status'] == 'ok' for s in ('matmul', 'nvml_calls', 'counter_update', 'windows', 'scope', 'multi_gpu',
                                                  'builtin_model', 'overhead')), st
    if importlib.util.find_spec('transformers'):  # the random Llama through `energytok run --model FOLDER`
        assert st['llm_1b']['status'] == 'ok', st['llm_1b']
        rows = list(csv.DictReader(open(out / 'llm.csv')))
        assert {r['batch_size'] for r in rows} == {'2', '4'} and all(float(r['j_per_token']) > 0 for r in rows)
        assert results['llm_1b']['params'] > 0 and results['llm_1b']['summary']['2']['estimated'] is True  # no sensor here
    else: assert st['llm_1b'] == {**st['llm_1b'], 'status': 'skipped', 'reason': 'transformers is not installed'}
    # the stand-ins' counters refresh every 20 ms: the measured refresh period says so
    assert results['counter_update']['counter_update_s'] == pytest.approx(0.02, rel=0.25)
    assert set(results['overhead_throughput_ratio']) == {'100Hz', '1kHz'}
    for sp in results['overhead_throughput_ratio'].values():  # every ratio with its spread over the repetitions
        assert sp['n'] == 3 and sp['min'] <= sp['q1'] <= sp['median'] <= sp['q3'] <= sp['max']
    windows = list(csv.DictReader(open(out / 'windows.csv')))
    assert {w['period_s'] for w in windows} == {'0.01', '0.001'} and {w['workload'] for w in windows} == {'idle', 'matmul'}
    ag = results['agreement']['abs_discrepancy_all']  # windows whose counter moved have a counter-vs-polling figure
    assert 1 <= ag['n'] <= len(windows) and 0 <= ag['min'] <= ag['q1'] <= ag['median'] <= ag['q3'] <= ag['max']
    assert all(w['provenance'] == 'nvml-energy-counter' and w['gpu:0_polling_j'] for w in windows)
    assert [s['period_s'] for s in results['sampler']] == [0.01, 0.001] and all(s['achieved_period_s'] > 0 for s in results['sampler'])
    assert [i['period_s'] for i in results['idle']] == [0.01, 0.001] and all('settle_s' in i and 'baseline' in i for i in results['idle'])
    assert results['environment']['gpu_selection']['metered_devices'][0]['name'] == 'FAKE NVML stand-in (dry run)'
    trace = list(csv.DictReader(open(out / 'trace_matmul.csv')))
    assert trace[0]['kind'] == 'edge' and trace[-1]['kind'] == 'edge'


# ---- sections fail alone, the budget holds inside loops ------------------------------------------------------------
def test_a_failing_section_is_recorded_and_results_json_is_written(tmp_path):
    results = dict(sections={})
    assert not gv.run_section(results, 'broken', lambda: 1 / 0, tmp_path)
    assert gv.run_section(results, 'fine', lambda: dict(x=1), tmp_path)
    def spent(): raise gv.BudgetSpent('windows: time budget spent (450 of 450 s)')
    gv.run_section(results, 'late', spent, tmp_path)
    on_disk = json.loads((tmp_path / 'results.json').read_text())
    assert on_disk['sections']['broken']['status'] == 'failed' and 'ZeroDivisionError' in on_disk['sections']['broken']['error']
    assert 'Traceback' in on_disk['sections']['broken']['traceback']
    assert on_disk['fine'] == {'x': 1} and on_disk['sections']['late'] == {**on_disk['sections']['late'], 'status': 'budget'}


def test_the_budget_stops_a_section_inside_its_loop():
    wl = gv.Workload('cpu', 64, __import__('torch').float32)
    budget = gv.Budget(1.5)
    t = time.perf_counter()
    with pytest.raises(gv.BudgetSpent, match='windows: time budget spent'): wl.run_for(30.0, 1e-4, budget, 'windows')
    assert time.perf_counter() - t < 2.0  # stopped within one chunk of the limit, not after the 30 s asked for


# ---- idle settle -------------------------------------------------------------------------------------------------
def gpu_of(fake):
    return gpu_sensors(nvml=fake, env={}).sensors[0]


def test_idle_waits_for_power_to_settle_and_records_how_long():
    cooling = Trace([0.0, 1.2, 60.0], [400.0, 80.0, 80.0])  # power falls for 1.2 s after a load, then holds
    r = gv.settle(gpu_of(FakeNVML([dict(trace=cooling)])), gv.Budget(60), max_s=10, window_s=0.5, period_s=0.05)
    assert r['settled'] and 1.2 + 0.5 - 0.1 <= r['settle_s'] < 3.0 and r['power_w'] == pytest.approx(80.0)
    assert r['trace'][0][1] > 300


def test_idle_settle_is_bounded():
    r = gv.settle(gpu_of(FakeNVML([dict(trace=Trace([0.0, 0.2, 0.4], [100.0, 300.0, 100.0]))])), gv.Budget(60),
                  max_s=1.0, window_s=0.5, period_s=0.05)
    assert not r['settled'] and 1.0 <= r['settle_s'] < 1.5


# ---- scope -----------------------------------------------------------------------------------------------------------
def windows_at(levels_w, **device):
    "Window rows (as windows.csv has them) at constant power levels on stand-in GPUs."
    rows = []
    for p in levels_w:
        gpu = gpu_of(FakeNVML([dict(power_w=p, counter_update_s=0.001, **device)]))
        with Meter([gpu], period_s=0.01) as m:
            with m.window('w') as w: time.sleep(0.5)
        rows.append(gv.window_row(w.result, 'matmul', 0.5, 0.01))
    return rows


def test_a_constant_gap_between_counter_and_power_field_is_scope():
    rows = windows_at([100.0, 300.0, 600.0], counter_extra_w=40.0)  # the counter covers 40 W the power field does not
    r = gv.scope_check(rows, 'gpu:0', min_s=0.4)
    assert r['verdict'].startswith('constant gap of +') and 'different scopes' in r['verdict']
    assert r['gap_intercept_w'] == pytest.approx(40.0, abs=6) and abs(r['gap_slope']) < 0.02
    same = gv.scope_check(windows_at([100.0, 300.0, 600.0]), 'gpu:0', min_s=0.4)
    assert same['verdict'].startswith('same scope')


def test_a_gap_that_grows_with_power_is_not_called_scope():
    rows = [{'duration_s': 2.0, 'gpu:0_polling_j': 2.0 * p, 'gpu:0_counter_j': 2.0 * p * 1.06} for p in (100.0, 300.0, 600.0)]
    r = gv.scope_check(rows, 'gpu:0')
    assert r['gap_slope'] == pytest.approx(0.06) and r['verdict'].startswith('gap grows with power')
    assert gv.scope_check(rows[:2], 'gpu:0')['verdict'].startswith('not enough windows')


# ---- ML.ENERGY ---------------------------------------------------------------------------------------------------
def llm_summary(jpt, estimated=False, params=1.236e9):
    return dict(params=params, summary={'8': dict(j_per_token=dict(median=jpt), estimated=estimated),
                                        '64': dict(j_per_token=dict(median=jpt / 4), estimated=estimated)})


@pytest.mark.skipif(not REFERENCE.exists(), reason='the ML.ENERGY reference data is not beside this checkout')
def test_mlenergy_comparison_per_billion_parameters_at_the_nearest_batch():
    ref = [r for r in csv.DictReader(open(REFERENCE)) if r['architecture'] == 'Dense Transformer' and r['num_gpus'] == '1'
           and r['gpu_model'] == 'H100' and r['weight_precision'] == 'bfloat16']
    small = min(float(r['activated_params_billions']) for r in ref)
    at8 = statistics.median(float(r['energy_per_token_joules']) for r in ref
                            if float(r['activated_params_billions']) == small and r['max_num_seqs'] == '8')
    c = gv.mlenergy_comparison(llm_summary(0.05), REFERENCE)
    assert c['reference_params_b'] == small == 8.0 and 'meta-llama/Llama-3.1-8B-Instruct' in c['reference_models']
    b8 = c['by_batch']['8']
    assert b8['reference_max_num_seqs'] == 8 and b8['reference_j_per_token'] == pytest.approx(at8)
    assert b8['ratio'] == pytest.approx((0.05 / 1.236) / (at8 / 8.0)) and b8['same_order_of_magnitude'] is True
    assert c['by_batch']['64']['reference_max_num_seqs'] == 64
    assert gv.mlenergy_comparison(llm_summary(50.0), REFERENCE)['by_batch']['8']['same_order_of_magnitude'] is False
    est = gv.mlenergy_comparison(llm_summary(0.05, estimated=True), REFERENCE)
    assert 'ratio' not in est['by_batch']['8'] and 'estimated' in est['by_batch']['8']['not_compared']


def test_shell_wrapper_is_valid_bash_and_names_its_wheels():
    assert subprocess.run(['bash', '-n', str(SHELL)]).returncode == 0
    text = SHELL.read_text()
    assert 'fastcore==' in text and 'codecarbon==' in text and '--download-wheels' in text and 'LIMIT_S:-480' in text
