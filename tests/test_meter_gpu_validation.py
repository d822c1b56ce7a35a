"""benchmarks/gpu_validation.py without a GPU: a clear exit where none is visible, and a dry run through the
FakeNVML stand-in that writes every output file."""
import csv, json, subprocess, sys
from pathlib import Path

import pynvml
import pytest

SCRIPT = Path(__file__).parents[1] / 'benchmarks' / 'gpu_validation.py'


def has_nvidia_gpu():
    try: pynvml.nvmlInit(); return pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError: return False


@pytest.mark.skipif(has_nvidia_gpu(), reason='an NVIDIA GPU is visible')
def test_exits_with_a_clear_message_without_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path/'out')], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert 'no NVIDIA GPU visible' in res.stderr and 'NVML' in res.stderr
    assert not (tmp_path/'out').exists()


def test_dry_run_writes_every_output(tmp_path):
    out = tmp_path/'out'
    res = subprocess.run([sys.executable, str(SCRIPT), str(out), '--dry-run-fake', '--quick'],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'DRY RUN' in res.stdout
    assert {'results.json', 'windows.csv', 'sampler.csv', 'overhead.csv', 'trace_matmul.csv'} <= {p.name for p in out.iterdir()}
    results = json.loads((out/'results.json').read_text())
    assert results['environment']['dry_run'] is True
    assert set(results['overhead_throughput_ratio']) == {'100Hz', '1kHz'}
    for sp in results['overhead_throughput_ratio'].values():  # every ratio with its spread over the repetitions
        assert sp['n'] == 3 and sp['min'] <= sp['q1'] <= sp['median'] <= sp['q3'] <= sp['max']
    windows = list(csv.DictReader(open(out/'windows.csv')))
    assert {w['period_s'] for w in windows} == {'0.01', '0.001'}
    ag = results['agreement']['abs_discrepancy_all']  # windows whose counter moved have a counter-vs-polling figure
    assert 1 <= ag['n'] <= len(windows) and 0 <= ag['min'] <= ag['q1'] <= ag['median'] <= ag['q3'] <= ag['max']
    assert all(w['provenance'] == 'nvml-energy-counter' and w['gpu:0_polling_j'] for w in windows)
    sampler = list(csv.DictReader(open(out/'sampler.csv')))
    assert [float(s['period_s']) for s in sampler] == [0.01, 0.001] and all(float(s['achieved_period_s']) > 0 for s in sampler)
    trace = list(csv.DictReader(open(out/'trace_matmul.csv')))
    assert trace[0]['kind'] == 'edge' and trace[-1]['kind'] == 'edge'
