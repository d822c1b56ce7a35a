"""The sampler process: chosen below 10 ms, exact energies, NVML stand-ins carried or re-opened by UUID, sensor failures
and a dead child reported (never 0 J), sensors that cannot go fall back to a thread, the ring drops rather than blocks,
and the CPU estimate is read at its own rate."""
import functools, os, pickle, signal, threading, time
from pathlib import Path

import numpy as np
import pytest

from energytok.meter import Meter
from energytok.nvml import FakeNVML, nvml_statuses
from energytok.sampler import KIND_TICK, ProcessSampler, Ring, SamplerError, factory_of, portability, reopen_nvml
from energytok.sensors import CodecarbonCPUEstimate, Reading, ReplaySensor, Trace, load_trace

DATA = Path(__file__).parents[1] / 'data'
SINE = load_trace(DATA/'replay_sine.csv')
SINE_E = lambda t: 250*t + 300/(2*np.pi)*(1 - np.cos(2*np.pi*t/2.0))


class Raising(ReplaySensor):
    "Fails at every read, in whichever process reads it."
    def read(self): raise RuntimeError('GPU is lost')


class Unpicklable(ReplaySensor):
    "Holds a lock, which cannot be pickled."
    def __init__(self, *a, **k): super().__init__(*a, **k); self.lock = threading.Lock()


def truth(s, r): return SINE_E(r.end_s - s.t0_s) - SINE_E(r.start_s - s.t0_s)


@pytest.mark.parametrize('period, sampler, expected', [(0.001, 'auto', 'process'), (0.005, 'auto', 'process'),
                                                       (0.01, 'auto', 'thread'), (0.001, 'thread', 'thread'),
                                                       (0.05, 'process', 'process')])
def test_the_sampler_is_chosen_by_period_or_asked_for(period, sampler, expected):
    with Meter([ReplaySensor(SINE)], period_s=period, sampler=sampler) as m:
        time.sleep(0.05)
        assert m.sampler_used == expected and m.running
    assert not m.running and m._proc is None


def test_process_sampler_energy_is_exact_and_windows_chain():
    rs = ReplaySensor(SINE)
    with Meter([rs], period_s=0.001) as m:
        m.begin_window('a'); time.sleep(0.2)
        a = m.next_window('a', 'b'); time.sleep(0.15)
        b = m.end_window('b')
        stats = m.sampler_stats()
    assert stats['sampler'] == 'process' and stats['ticks'] > 50 and stats['sampler_errors'] == []
    for r in (a, b):
        assert r.energy_j == pytest.approx(truth(rs, r), rel=1e-3)
        assert r.polling_energy_by_domain_j['replay:0'] == pytest.approx(truth(rs, r), rel=1e-3)
        assert r.n_samples > 50 and r.energy_uncertainty_j < 0.01 * r.energy_j
    assert a.end_s == b.start_s


def test_a_failing_sensor_in_the_child_is_missing_energy_with_its_message():
    with Meter([Raising(SINE, domain='gpu:0'), ReplaySensor(SINE, domain='ok')], period_s=0.002) as m:
        assert m.sampler_used == 'process'
        with m.window('w') as w: time.sleep(0.1)
    r = w.result
    assert r.energy_by_domain_j['gpu:0'] is None and r.energy_j is None and r.energy_by_domain_j['ok'] > 0
    assert any(f.startswith('energy-missing:gpu:0') and 'GPU is lost' in f for f in r.flags)
    assert any(f.startswith('sensor-error:gpu:0') for f in r.flags)


def test_fake_nvml_goes_to_the_child_and_its_counter_wraps_there():
    fake = FakeNVML([dict(power_w=400.0, counter_start_mj=2**64 - 40_000, counter_update_s=0)])  # wraps after 100 ms; a continuous counter
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu], period_s=0.002) as m:
        assert m.sampler_used == 'process'
        with m.window('w') as w: time.sleep(0.25)
    r = w.result
    assert r.method_by_domain['gpu:0']['counter_wraps'] == 1  # the child's sensor, reported back
    assert r.counter_energy_by_domain_j['gpu:0'] == pytest.approx(400.0 * r.duration_s, rel=0.02)
    assert r.provenance == {'gpu:0': 'nvml-energy-counter'}


def test_an_nvml_sensor_that_cannot_be_pickled_is_reopened_by_uuid():
    fake = FakeNVML([dict(power_w=250.0, counter_update_s=0)])  # a continuous counter: the energy is exact whatever the phase
    gpu = nvml_statuses(fake, env={})[0].sensor
    gpu.handle = threading.Lock()  # as a real NVML handle: it cannot cross processes
    f = factory_of(gpu)
    assert isinstance(f, functools.partial) and f.func is reopen_nvml and f.args[0] is fake
    with Meter([gpu], period_s=0.002) as m:
        assert m.sampler_used == 'process', m.sampler_note
        with m.window('w') as w: time.sleep(0.2)
    assert w.result.energy_j == pytest.approx(250.0 * w.result.duration_s, rel=0.02)
    assert w.result.provenance == {'gpu:0': 'nvml-energy-counter'}


def test_a_counter_refreshed_every_100ms_has_an_uncertainty_that_covers_the_truth():
    "A 0.2 s window on a counter refreshed every 0.1 s counts refreshes; its uncertainty says so and covers 250 W x duration."
    fake = FakeNVML([dict(power_w=250.0, counter_update_s=0.1)])
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu], period_s=0.002) as m:
        with m.window('w') as w: time.sleep(0.2)
    r = w.result
    assert r.energy_uncertainty_j > 20  # about one refresh (25 J): the counter cannot say where in a refresh the edges fell
    assert abs(r.energy_j - 250.0 * r.duration_s) <= r.energy_uncertainty_j
    assert any(f.startswith('short-window:gpu:0') and 'counter refreshes' in f for f in r.flags)


def test_sensors_that_cannot_go_keep_the_meter_on_a_thread_or_are_refused():
    s = Unpicklable(SINE)
    assert 'cannot be sent to another process' in portability([s])
    with Meter([s], period_s=0.001) as m:
        assert m.sampler_used == 'thread' and 'cannot be sent to another process' in m.sampler_note
        with m.window('w') as w: time.sleep(0.05)
    assert w.result.energy_j > 0 and m.sampler_stats()['sampler_note'] == m.sampler_note
    with pytest.raises(ValueError, match="sampler: 'process' needs sensors.*replay:0"):
        Meter([s], period_s=0.001, sampler='process').start()
    with pytest.raises(ValueError, match='sampler: expected one of'): Meter([ReplaySensor(SINE)], sampler='gpu')


def test_a_child_that_dies_fails_every_read_from_then_and_energy_goes_missing():
    with Meter([ReplaySensor(SINE)], period_s=0.002) as m:
        m.begin_window('w'); time.sleep(0.05)
        os.kill(m._proc.proc.pid, signal.SIGKILL)
        time.sleep(0.2)
        r = m.end_window('w')
        assert any('sampler process ended' in e for e in m.sampler_stats()['sampler_errors'])
    assert r.energy_j is None and any(f.startswith('energy-missing:replay:0') for f in r.flags)


def test_the_ring_drops_ticks_when_nobody_reads_and_says_so():
    ps = ProcessSampler([ReplaySensor(SINE)], period_s=0.001, capacity=64).start()
    try:
        time.sleep(0.3)
        assert ps.dropped > 100  # a full ring never blocks the child: it counts what it could not write
        rows, _ = ps.take()
        assert len(rows) == 64 and (rows[:, 0] == KIND_TICK).all()
        assert ps.request_edge(1.0)
    finally:
        ps.stop(); ps.close()
    assert not ps.alive


def test_a_child_that_cannot_build_its_sensors_is_a_sampler_error():
    class Local(ReplaySensor): pass  # a class inside a function: another process cannot import it
    ps = ProcessSampler([ReplaySensor(SINE)], period_s=0.001)
    ps.sensors[0].__class__ = Local
    with pytest.raises(SamplerError, match='cannot be sent|did not start'): ps.start(timeout_s=30)


def test_ring_rows_are_taken_whole_and_in_order():
    ring = Ring(2, 8)
    for k in range(5): ring.write([KIND_TICK, k, 0.0] + [k, 1.0, 2.0, 0.0] * 2)
    ring.rows[(5 - 1) % 8, -1] = 0  # the last row not yet complete
    rows = ring.take()
    assert rows[:, 1].tolist() == [0, 1, 2, 3] and int(ring.head[1]) == 4
    ring.close()


def test_the_cpu_estimate_is_read_at_its_own_rate_in_both_samplers():
    for sampler in ('thread', 'process'):
        est = CodecarbonCPUEstimate(load_period_s=0.05)
        with Meter([est, ReplaySensor(SINE)], period_s=0.002, sampler=sampler) as m:
            with m.window('w') as w: time.sleep(0.5)
        est_track, replay_track = m.tracks
        assert replay_track.n_samples > 100
        assert 5 <= est_track.n_samples <= 0.5 / 0.05 + 6, (sampler, est_track.n_samples)  # every 50 ms, and the edges
        r = w.result
        assert r.energy_by_domain_j['cpu-estimate'] > 0 and not any(f.startswith('sampling-gap:cpu-estimate') for f in r.flags)
