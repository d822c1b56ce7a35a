"""Sensors: NVML through a stand-in at the pynvml call boundary, RAPL through a fake sysfs tree, the codecarbon
estimate offline, replay traces, counter unwrapping, discovery and the `energytok sensors` command."""
import json, os, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import pynvml
import pytest
from hypothesis import given, settings, strategies as st

import energytok.rapl as rapl_mod
from energytok.cli import main
from energytok.nvml import FakeNVML, NVMLSensor, nvml_statuses
from energytok.rapl import RAPLSensor, rapl_statuses, write_fake_powercap
from energytok.sensors import (CodecarbonCPUEstimate, CounterUnwrap, ReplaySensor, SensorError, Trace,
                               available_sensors, codecarbon_cpu_tdp, describe_sensors, load_trace, save_trace)

DATA = Path(__file__).parents[1] / 'data'
EXE = str(Path(sys.executable).with_name('energytok'))


# ---- counters ------------------------------------------------------------------------------------------------
@given(st.integers(100, 10**6), st.integers(0, 10**6 - 1), st.lists(st.integers(0, 10**6 - 1), min_size=1, max_size=50))
def test_unwrap_recovers_every_increment(range_raw, start, increments):
    "Each increment is smaller than the range, so the unwrapped total is their sum."
    start %= range_raw
    uw, raw, total = CounterUnwrap(range_raw), start, 0
    uw(raw)
    for inc in increments:
        inc %= range_raw
        raw = (raw + inc) % range_raw
        total += inc
        assert uw(raw) == total


def test_unwrap_refuses_bad_range():
    with pytest.raises(ValueError, match='range_raw'): CounterUnwrap(0)


# ---- NVML through the stand-in ----------------------------------------------------------------------------------
def sensor_of(fake, i=0):
    fake.nvmlInit()
    return NVMLSensor(fake, fake.nvmlDeviceGetHandleByIndex(i), f'gpu:{i}', i)


def test_nvml_device_with_counter_and_instant_power():
    s = sensor_of(FakeNVML([dict(power_w=300.0)]))
    assert (s.has_counter, s.power_field, s.provenance, s.power_provenance) == (True, 'instant', 'nvml-energy-counter', 'nvml-power')
    assert s.read().power_w == pytest.approx(300.0)
    m = s.method()
    assert m['power_limit_w'] == 700.0 and m['driver_version'] == '550.54.15' and s.temperature_c() == 40.0


@pytest.mark.parametrize('fields, expected', [({186}, 'instant'), ({185}, 'average'), (False, 'usage')])
def test_nvml_power_reading_fallback(fields, expected):
    "Instant power field first, then the average field, then nvmlDeviceGetPowerUsage."
    s = sensor_of(FakeNVML([dict(power_fields=fields, power_w=123.0)]))
    assert s.power_field == expected and s.read().power_w == pytest.approx(123.0)


def test_nvml_counter_reset_is_an_error_not_a_wrap():
    "A counter that falls back (driver reload) is refused as a reset, never read as a 2^64 mJ wrap; counting resumes."
    fake = FakeNVML([dict(counter_start_mj=10**9, power_w=300.0)])
    s = sensor_of(fake)
    before = s.read().energy_j
    fake.devices[0]['counter_start_mj'] = 0  # the counter restarts near zero
    with pytest.raises(SensorError, match=r'gpu:0 .*reset, not a wraparound'): s.read()
    time.sleep(0.05)
    after = s.read().energy_j
    assert before <= after < before + 300.0 * 1.0  # no 1.8e16 J jump
    assert (s.method()['counter_resets'], s.method()['counter_wraps']) == (1, 0)


def test_nvml_device_without_counter_uses_polled_power():
    s = sensor_of(FakeNVML([dict(counter=False, power_w=50.0)]))
    r = s.read()
    assert (s.has_counter, s.provenance, r.energy_j, s.update_period_s) == (False, 'nvml-power', None, None)
    st_ = nvml_statuses(FakeNVML([dict(counter=False)]), env={})[0]
    assert st_.present and 'no energy counter' in st_.reason


def test_nvml_device_with_nothing_is_absent():
    fake = FakeNVML([dict(counter=False, power_fields=False, name='Old GPU')])
    fake.nvmlDeviceGetPowerUsage = lambda h: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED))
    st_ = nvml_statuses(fake, env={})
    assert not st_[0].present and 'neither the energy counter nor a power reading' in st_[0].reason


def test_nvml_counter_wrap_at_2_64_mj():
    fake = FakeNVML([dict(counter_start_mj=2**64 - 20_000, power_w=500.0, counter_update_s=0)])  # continuous; wraps after 20 J = 40 ms
    s = sensor_of(fake)
    a = s.read(); time.sleep(0.15); b = s.read()
    assert s.method()['counter_wraps'] == 1
    assert b.energy_j - a.energy_j == pytest.approx(500.0 * (b.t_s - a.t_s), rel=0.05)
    assert b.energy_j > a.energy_j > -1e-9


def test_nvml_lost_gpu_stays_lost_until_reset_then_the_counter_restarts():
    "As on hardware: clearing the error does not bring a lost GPU back; after a reset the counter restarts, a reset not a wrap."
    fake = FakeNVML([dict(power_w=300.0, counter_update_s=0.01)])
    s = sensor_of(fake)
    before = s.read().energy_j
    fake.devices[0]['error'] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(SensorError, match=r'gpu:0 .*energy counter: .*GPU is lost'): s.read()
    fake.devices[0]['error'] = None
    with pytest.raises(SensorError, match='GPU is lost'): s.read()
    fake.reset_gpu(0)
    with pytest.raises(SensorError, match='reset, not a wraparound'): s.read()
    time.sleep(0.1)
    after = s.read().energy_j
    assert before <= after < before + 300.0 * 0.5
    assert s.method()['counter_resets'] == 1


def test_nvml_transient_error_recovers():
    "An error that is not a lost GPU (here a timeout) lasts only while it is scripted."
    fake = FakeNVML([dict()])
    s = sensor_of(fake)
    fake.devices[0]['error'] = pynvml.NVML_ERROR_TIMEOUT
    with pytest.raises(SensorError, match=r'gpu:0 .*Timeout'): s.read()
    fake.devices[0]['error'] = None
    assert s.read().energy_j >= 0


def test_nvml_init_failure_is_reported_absent():
    st_ = nvml_statuses(FakeNVML([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert len(st_) == 1 and not st_[0].present and 'LibraryNotFound' in st_[0].reason


def test_nvml_real_library_absent_on_this_machine():
    "This machine has no NVIDIA driver: the status says so instead of inventing a GPU."
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        st_ = nvml_statuses()
        assert not st_[0].present and 'NVML unavailable' in st_[0].reason
    else:
        pytest.skip('an NVIDIA driver is present')


TWO = [dict(name='NVIDIA H200', uuid='GPU-1111-aaaa'), dict(name='NVIDIA H200', uuid='GPU-2222-bbbb')]


@pytest.mark.parametrize('visible, expected', [
    (None, [('gpu:0', 0), ('gpu:1', 1)]),
    ('1,0', [('gpu:0', 1), ('gpu:1', 0)]),
    ('GPU-2222', [('gpu:0', 1)]),
    ('1', [('gpu:0', 1)]),
])
def test_cuda_visible_devices_order_and_uuids(visible, expected):
    env = {} if visible is None else {'CUDA_VISIBLE_DEVICES': visible}
    st_ = [s for s in nvml_statuses(FakeNVML(TWO), env=env) if s.present]
    assert [(s.domain, s.sensor.nvml_index) for s in st_] == expected


@pytest.mark.parametrize('visible, why', [('', 'hides every GPU'), ('-1', "'-1' matches no device"),
                                          ('GPU-', 'matches several devices'), ('7', "'7' matches no device")])
def test_cuda_visible_devices_hiding_everything(visible, why):
    st_ = nvml_statuses(FakeNVML(TWO), env={'CUDA_VISIBLE_DEVICES': visible})
    assert [s.present for s in st_] == [False] and why in st_[0].reason


def test_cuda_visible_devices_stops_at_first_invalid_entry():
    st_ = nvml_statuses(FakeNVML(TWO), env={'CUDA_VISIBLE_DEVICES': '1,9,0'})
    assert [(s.domain, s.present) for s in st_] == [('gpu:0', True), ('gpu:1', False)]
    assert "'9' matches no device" in st_[1].reason


def test_mig_instance_is_refused_with_whose_energy_it_would_be():
    fake = FakeNVML([dict(uuid='GPU-p0'), dict(uuid='GPU-p1', mig=['MIG-aaaa', 'MIG-bbbb'])])
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-bbbb,MIG-aaaa'})
    assert [(s.domain, s.present) for s in st_] == [('gpu:0', False), ('gpu:1', False)]
    assert 'MIG instance MIG-bbbb' in st_[0].reason and "the counter is the whole GPU's" in st_[0].reason
    assert "['MIG-aaaa', 'MIG-bbbb']" in st_[0].reason and 'mig_parent=True' in st_[0].reason
    assert available_sensors(nvml=fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-bbbb'}, rapl_root='/nonexistent', estimate=False) == []


def test_mig_instance_is_metered_through_its_parent_when_asked():
    fake = FakeNVML([dict(uuid='GPU-p0'), dict(uuid='GPU-p1', mig=['MIG-aaaa', 'MIG-bbbb'])])
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-bbbb,MIG-aaaa'}, mig_parent=True)
    assert len(st_) == 1, 'two instances of one GPU give one sensor'
    s = st_[0].sensor
    assert (s.uuid, s.nvml_index, s.mig) == ('GPU-p1', 1, ['MIG-bbbb', 'MIG-aaaa'])
    assert "whole GPU GPU-p1's" in st_[0].reason and 'whole GPU GPU-p1' in s.method()['covers']
    assert s.read().power_w == pytest.approx(300.0)
    # the MIG handle itself has no power reading, which is why the parent is used
    with pytest.raises(pynvml.NVMLError):
        fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByUUID('MIG-aaaa'))


def test_mig_enabled_gpu_by_index_is_refused_unless_asked():
    fake = FakeNVML([dict(uuid='GPU-p1', mig=['MIG-aaaa'])])
    assert not nvml_statuses(fake, env={})[0].present and 'in MIG mode' in nvml_statuses(fake, env={})[0].reason
    st_ = nvml_statuses(fake, env={}, mig_parent=True)[0]
    assert st_.present and st_.sensor.mig == ['MIG-aaaa'] and 'MIG (mig_parent=True)' in st_.reason


# ---- RAPL through a fake sysfs tree -----------------------------------------------------------------------------
def test_rapl_discovery_packages_and_dram(tmp_path):
    write_fake_powercap(tmp_path, packages=2)
    st_ = rapl_statuses(tmp_path)
    present = sorted(s.domain for s in st_ if s.present)
    assert present == ['cpu:0-dram', 'cpu:0-package', 'cpu:1-dram', 'cpu:1-package']
    assert all('not summed' in s.reason for s in st_ if not s.present)
    assert all(s.provenance == 'rapl' and not s.estimated for s in st_ if s.present)


def test_rapl_psys_is_not_summed(tmp_path):
    write_fake_powercap(tmp_path, packages=1, dram=False)
    (tmp_path/'intel-rapl:1').mkdir()
    for f, v in (('name', 'psys'), ('energy_uj', 0), ('max_energy_range_uj', 1000)): (tmp_path/'intel-rapl:1'/f).write_text(f'{v}\n')
    st_ = {s.domain: s for s in rapl_statuses(tmp_path)}
    assert st_['cpu:0-package'].present and not st_['platform-psys'].present
    assert 'overlaps package and DRAM' in st_['platform-psys'].reason


def test_rapl_wraparound_at_max_energy_range(tmp_path):
    write_fake_powercap(tmp_path, energy_uj=990_000, max_energy_range_uj=1_000_000)
    s = RAPLSensor(tmp_path/'intel-rapl:0', 'cpu:0-package')
    f = tmp_path/'intel-rapl:0'/'energy_uj'
    readings = []
    for raw in (999_000, 5_000, 600_000, 100_000):  # two wraps
        f.write_text(f'{raw}\n'); readings.append(s.read().energy_j)
    assert readings == pytest.approx([0.009, 0.015, 0.61, 1.11])
    assert s.method()['counter_wraps'] == 2


def test_rapl_unreadable_files_have_a_clear_message(tmp_path, monkeypatch):
    write_fake_powercap(tmp_path)
    if os.geteuid() != 0:
        for f in tmp_path.rglob('energy_uj'): f.chmod(0)
    else:  # root reads everything: imitate the kernel's permission error
        real = rapl_mod._read_text
        def denied(path):
            if str(path).endswith('energy_uj'): raise PermissionError(13, 'Permission denied', str(path))
            return real(path)
        monkeypatch.setattr(rapl_mod, '_read_text', denied)
    st_ = [s for s in rapl_statuses(tmp_path) if s.domain.endswith(('package', 'dram'))]
    assert st_ and not any(s.present for s in st_)
    assert all('cannot read it' in s.reason and 'root since 5.10' in s.reason and 'chmod' in s.reason for s in st_)


def test_rapl_file_vanishing_mid_run(tmp_path):
    write_fake_powercap(tmp_path)
    s = RAPLSensor(tmp_path/'intel-rapl:0', 'cpu:0-package')
    (tmp_path/'intel-rapl:0'/'energy_uj').unlink()
    with pytest.raises(SensorError, match=r'cpu:0-package: cannot read .*energy_uj'): s.read()


def test_rapl_absent_root():
    st_ = rapl_statuses('/nonexistent/powercap')
    assert not st_[0].present and 'does not exist' in st_[0].reason


# ---- codecarbon estimate ---------------------------------------------------------------------------------------
def test_estimate_is_labelled_with_its_method():
    s = CodecarbonCPUEstimate()
    time.sleep(0.02)
    r = s.read()
    m = s.method()
    assert (s.provenance, s.estimated, s.domain) == ('estimate:codecarbon-cpu-load', True, 'cpu-estimate')
    assert m['cpu_model'] and m['tdp_w'] > 0 and 'codecarbon' in m['tdp_source']
    assert 0 <= m['load_fraction'] <= 1 and 0 < r.power_w <= m['tdp_w']


def test_estimate_tdp_is_codecarbons_own():
    from codecarbon.core.cpu import TDP
    assert codecarbon_cpu_tdp()['tdp_w'] == pytest.approx(float(TDP().tdp))


class FixedLoad:
    def __init__(self, percent): self.percent_value = percent
    def percent(self, *a, **k): return self.percent_value
    def reset(self): pass


def test_estimate_rises_with_load():
    s = CodecarbonCPUEstimate()
    powers = []
    for pct in (0.0, 30.0, 60.0, 100.0):
        s._load.inner = FixedLoad(pct)
        powers.append(s.read().power_w)
        assert s.method()['load_fraction'] == pytest.approx(pct / 100)
    assert powers == sorted(powers) and powers[0] < powers[-1] == pytest.approx(s.tdp['tdp_w'])


def test_estimate_is_offline_and_writes_nothing(tmp_path):
    "A fresh process with sockets disabled builds the estimate and leaves its working folder empty."
    code = ("import socket\n"
            "def refuse(*a, **k): raise OSError('network disabled in this test')\n"
            "socket.socket.connect = refuse; socket.create_connection = refuse\n"
            "from energytok.sensors import CodecarbonCPUEstimate\n"
            "s = CodecarbonCPUEstimate(); import time; time.sleep(0.02); print(s.read().power_w)\n")
    res = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.split()[-1]) > 0
    assert list(tmp_path.iterdir()) == []
    assert 'codecarbon WARNING' not in res.stderr


# ---- replay traces ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('suffix', ['.csv', '.json'])
def test_trace_round_trip(tmp_path, suffix):
    tr = Trace([0.0, 0.5, 1.0], [10.0, 20.0, 15.0], [0.0, 7.5, 16.25], meta={'source': 'test'})
    back = load_trace(save_trace(tr, tmp_path/f't{suffix}'))
    assert np.allclose(back.power_w, tr.power_w) and np.allclose(back.energy_j, tr.energy_j)
    assert back.meta['source'] == 'test'


@pytest.mark.parametrize('kwargs, match', [
    (dict(t_s=[0, 0, 1], power_w=[1, 1, 1]), 't_s: expected strictly increasing'),
    (dict(t_s=[0, 1], power_w=[1, -1]), 'power_w: expected finite values >= 0'),
    (dict(t_s=[0, 1], power_w=[1]), 'power_w: expected 2 values'),
    (dict(t_s=[0], power_w=[1]), 't_s: expected at least 2'),
])
def test_trace_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match): Trace(**kwargs)


def test_trace_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_trace(tmp_path/'missing.csv')
    (tmp_path/'t.txt').write_text('x')
    with pytest.raises(ValueError, match='path suffix'): load_trace(tmp_path/'t.txt')


def test_shipped_traces_match_their_formulas():
    sine = load_trace(DATA/'replay_sine.csv')
    assert np.allclose(sine.power_w, 250 + 150*np.sin(2*np.pi*sine.t_s/2.0), atol=1e-4)
    steps = load_trace(DATA/'replay_steps.json')
    phase = steps.t_s % 2.0
    expected = np.where(phase < 0.5, 80.0, np.where(phase < 1.5, 400.0, 180.0))
    assert np.array_equal(steps.power_w, expected)
    assert sine.meta['source'] == steps.meta['source'] == 'synthetic'


@given(st.floats(0.0, 20.0))
def test_replay_counter_is_the_exact_integral_of_the_sine(t):
    rs = ReplaySensor(load_trace(DATA/'replay_sine.csv'))
    exact = 250*t + 300/(2*np.pi)*(1 - np.cos(2*np.pi*t/2.0))
    assert rs.at(t)[0] == pytest.approx(exact, rel=1e-6, abs=1e-6)


def test_replay_uses_trace_energy_column_when_present():
    rs = ReplaySensor(Trace([0.0, 1.0, 2.0], [100.0, 100.0, 100.0], [5.0, 6.0, 10.0]))
    assert rs.at(1.5)[0] == pytest.approx(3.0)  # (8 - 5) from the column, not 150 J from the power


# ---- discovery and CLI ----------------------------------------------------------------------------------------------
def test_available_sensors_prefers_measurements(tmp_path):
    write_fake_powercap(tmp_path)
    found = available_sensors(nvml=FakeNVML([dict()]), rapl_root=tmp_path)
    assert [s.domain for s in found] == ['gpu:0', 'cpu:0-package', 'cpu:0-dram']
    assert not any(s.estimated for s in found)
    with_est = available_sensors(nvml=FakeNVML([dict()]), rapl_root=tmp_path, estimate=True)
    assert with_est[-1].provenance == 'estimate:codecarbon-cpu-load'


def test_available_sensors_falls_back_to_the_estimate(tmp_path):
    found = available_sensors(nvml=FakeNVML([], init_error=12), rapl_root=tmp_path/'none')
    assert [(s.domain, s.estimated) for s in found] == [('cpu-estimate', True)]


def test_describe_sensors_has_one_row_per_sensor(tmp_path):
    write_fake_powercap(tmp_path)
    df = describe_sensors(nvml=FakeNVML([dict(), dict()]), rapl_root=tmp_path)
    assert list(df.columns) == ['kind', 'domain', 'present', 'selected', 'provenance', 'estimated', 'how', 'reason']
    assert set(df.domain) >= {'gpu:0', 'gpu:1', 'cpu:0-package', 'cpu:0-dram', 'cpu:0-core', 'cpu-estimate'}
    assert df.set_index('domain').loc['cpu-estimate', 'estimated']


def test_sensors_cli_json_in_process(capsys):
    assert main(['sensors', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    by_kind = {r['kind']: r for r in rows}
    assert set(by_kind) >= {'nvml', 'rapl', 'estimate'}
    assert by_kind['estimate']['present'] and by_kind['estimate']['estimated']
    assert all(r['reason'] for r in rows if not r['present'])


def test_sensors_cli_end_to_end():
    res = subprocess.run([EXE, 'sensors'], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'cpu-estimate' in res.stdout and 'estimated' in res.stdout and 'estimate:codecarbon-cpu-load' in res.stdout
    lines = res.stdout.splitlines()
    assert lines[0].split() == ['domain', 'state', 'provenance'] and all(len(l) <= 100 for l in lines)  # a header, lines that fit
