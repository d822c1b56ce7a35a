"""The `%%joules` cell magic in a real IPython shell: loading, -o, options, sensors, failing cells."""
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from energytok.magic import JoulesMagics
from energytok.meter import WindowResult
from energytok.sensors import ReplaySensor, Trace

DATA = Path(__file__).parents[1] / 'data'


@pytest.fixture(scope='module')
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic('load_ext', 'energytok')
    return shell


def test_load_ext_registers_joules(ip):
    assert 'joules' in ip.magics_manager.magics['cell']


def test_joules_stores_result_and_prints_summary(ip, capsys):
    ip.run_cell_magic('joules', '-o res -p 0.05', 'y = sum(range(100_000))')
    out = capsys.readouterr().out
    res = ip.user_ns['res']
    assert isinstance(res, WindowResult) and ip.user_ns['y'] == sum(range(100_000))
    assert res.name == 'cell' and res.energy_j > 0
    # no sensor on this machine: the estimate, said as such
    assert 'energy:' in out and 'avg power:' in out and 'duration:' in out
    assert res.provenance_label in out and ('ESTIMATE' in out) == res.estimated


def test_joules_with_given_sensors_and_name(capsys):
    shell = InteractiveShell.instance()
    const = Trace([0.0, 1.0], [200.0, 200.0], meta={'source': 'constant'})
    shell.register_magics(JoulesMagics(shell, sensors=[ReplaySensor(const, domain='gpu:0')]))
    shell.run_cell_magic('joules', '-o r2 -n decode -p 0.01', 'import time; time.sleep(0.1)')
    r = shell.user_ns['r2']
    assert (r.name, r.provenance, r.estimated) == ('decode', {'gpu:0': 'replay'}, False)
    assert r.energy_j == pytest.approx(200.0 * r.duration_s, rel=1e-6) and r.duration_s >= 0.1
    assert 'ESTIMATE' not in capsys.readouterr().out


def test_quiet_prints_nothing(ip, capsys):
    ip.run_cell_magic('joules', '-q -o r3', 'z = 1')
    assert capsys.readouterr().out == '' and ip.user_ns['r3'].energy_j >= 0


def test_failing_cell_is_metered_and_flagged(ip):
    ip.run_cell_magic('joules', '-q -o r4', '1 / 0')
    assert 'exception-in-window: the cell raised' in ip.user_ns['r4'].flags


def test_bad_period_is_refused(ip):
    with pytest.raises(ValueError, match='period_s'):
        ip.run_cell_magic('joules', '-p 0', 'pass')


def test_cell_that_starts_cuda_is_synchronised_at_its_end_edge(monkeypatch):
    "CUDA started inside the cell: the end edge still waits for its queued work (a stand-in torch records the calls)."
    import sys, types
    calls = []
    cuda = types.SimpleNamespace(initialized=False, is_initialized=lambda: cuda.initialized,
                                 synchronize=lambda: calls.append('sync'))
    monkeypatch.setitem(sys.modules, 'torch', types.SimpleNamespace(cuda=cuda))
    shell = InteractiveShell.instance()
    shell.register_magics(JoulesMagics(shell, sensors=[ReplaySensor(Trace([0.0, 1.0], [50.0, 50.0]))]))
    shell.user_ns['cuda_stand_in'] = cuda
    shell.run_cell_magic('joules', '-q -o r5', 'cuda_stand_in.initialized = True')
    assert calls == ['sync'] and shell.user_ns['r5'].energy_j > 0  # not at the start edge, once at the end
