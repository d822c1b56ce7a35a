"""The meter: integration against closed-form integrals, additivity and non-negativity (hypothesis), bounded
memory, monotonic timestamps, edges, sync, nesting, sensor faults (NVML and RAPL stand-ins), idle baseline, traces."""
import json, os, threading, time
from pathlib import Path

import numpy as np
import pynvml
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from energytok.meter import Meter, WindowResult, _Edge, _Track, plot_window
from energytok.nvml import FakeNVML, nvml_statuses
from energytok.rapl import RAPLSensor, write_fake_powercap
from energytok.sensors import CodecarbonCPUEstimate, Reading, ReplaySensor, Sensor, Trace, load_trace

DATA = Path(__file__).parents[1] / 'data'
SINE = load_trace(DATA/'replay_sine.csv')
SINE_E = lambda t: 250*t + 300/(2*np.pi)*(1 - np.cos(2*np.pi*t/2.0))  # closed-form integral of the sine trace

# two tones, periods 0.8 s and 0.3 s; 2.4 s holds whole periods of both, so the looped trace is seamless
TONES_P = lambda t: 300 + 100*np.sin(2*np.pi*t/0.8) + 50*np.sin(2*np.pi*t/0.3)
TONES_E = lambda t: 300*t + 100*0.8/(2*np.pi)*(1 - np.cos(2*np.pi*t/0.8)) + 50*0.3/(2*np.pi)*(1 - np.cos(2*np.pi*t/0.3))
TONES = Trace.from_function(TONES_P, duration_s=2.4, step_s=5e-4, source='formula')


# ---- closed-form integrals at a 10 ms period ---------------------------------------------------------------------
@pytest.mark.parametrize('trace, exact', [(SINE, SINE_E), (TONES, TONES_E)], ids=['sine', 'two-tones'])
def test_integration_error_below_0_1_percent_at_10_ms(trace, exact):
    rs = ReplaySensor(trace)
    results = []
    with Meter([rs], period_s=0.01) as m:
        time.sleep(0.05)
        for k in range(3):
            with m.window(f'w{k}') as w: time.sleep(0.25 + 0.1 * k)
            results.append(w.result)
    at_period = [r for r in results if not any(f.startswith('sampling-gap') for f in r.flags)]
    assert at_period, 'the machine starved the sampler in every window (each one flagged sampling-gap)'
    for r in at_period:  # windows sampled at the 10 ms period (a starved window says so and is not the claim)
        truth = exact(r.end_s - rs.t0_s) - exact(r.start_s - rs.t0_s)
        assert r.polling_energy_by_domain_j['replay:0'] == pytest.approx(truth, rel=1e-3)
        assert r.counter_energy_by_domain_j['replay:0'] == pytest.approx(truth, rel=1e-3)
        assert r.energy_j == r.counter_energy_by_domain_j['replay:0'] and r.provenance == {'replay:0': 'replay'}
        assert abs(r.discrepancy_by_domain['replay:0']) < 1e-3


# ---- properties of the integration itself (no threads, exact) -----------------------------------------------------
class Scripted(Sensor):
    "Returns prepared readings in order."
    domain, has_counter, has_power, provenance, power_provenance = 'scripted', True, True, 'replay', 'replay'
    def __init__(self, readings): self.readings = iter(readings)
    def read(self): return next(self.readings)


samples_st = st.lists(st.tuples(st.floats(1e-4, 0.05), st.floats(0, 1000), st.floats(0, 50)), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(samples_st, st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_energy_additive_over_adjacent_windows_and_never_negative(samples, cuts):
    t, e, readings = 0.0, 0.0, []
    for dt, p, de in samples:
        t += dt; e += de
        readings.append(Reading(t, energy_j=e, power_w=p))
    t0, t1 = readings[0].t_s, readings[-1].t_s
    edge_times = sorted(min(t1, t0 + c * (t1 - t0)) for c in cuts)  # rounding must not push an edge past the last sample
    tr = _Track(Scripted(readings), max_samples=1000)
    tr.sample()
    edges = [tr.open_edge(x) for x in edge_times]
    for _ in readings[1:]: tr.sample()
    assert all(x.resolved for x in edges)
    poll = [b.poll_j - a.poll_j for a, b in zip(edges, edges[1:])]
    counter = [b.energy_j - a.energy_j for a, b in zip(edges, edges[1:])]
    assert min(poll) >= -1e-9 and min(counter) >= -1e-9
    assert sum(poll) == pytest.approx(edges[-1].poll_j - edges[0].poll_j, rel=1e-9, abs=1e-9)
    assert sum(counter) == pytest.approx(edges[-1].energy_j - edges[0].energy_j, rel=1e-9, abs=1e-9)
    # independent check: the polled integral is the exact integral of the piecewise-linear power over the window
    ts, ps = np.array([r.t_s for r in readings]), np.array([r.power_w for r in readings])
    a, b = edge_times[0], edge_times[-1]
    grid = np.unique(np.concatenate([[a, b], ts[(ts > a) & (ts < b)]]))
    exact = np.trapezoid(np.interp(grid, ts, ps), grid)
    assert edges[-1].poll_j - edges[0].poll_j == pytest.approx(exact, rel=1e-9, abs=1e-9)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.0, 0.03), min_size=1, max_size=4))
def test_chained_windows_add_up_on_a_running_meter(sleeps):
    rs = ReplaySensor(SINE)
    with Meter([rs], period_s=0.005) as m:
        m.begin_window('w0')
        results = []
        for k, s in enumerate(sleeps):
            time.sleep(s)
            results.append(m.next_window(f'w{k}', f'w{k+1}'))
        time.sleep(0.01)
        results.append(m.end_window(f'w{len(sleeps)}'))
    for r, nxt in zip(results, results[1:]): assert r.end_s == nxt.start_s
    assert all(r.energy_j >= 0 and r.polling_energy_by_domain_j['replay:0'] >= 0 for r in results)
    truth = SINE_E(results[-1].end_s - rs.t0_s) - SINE_E(results[0].start_s - rs.t0_s)
    assert sum(r.energy_j for r in results) == pytest.approx(truth, rel=1e-3)


# ---- sampler: bounded memory, monotonic time, schedule ------------------------------------------------------------
def test_bounded_memory_keeps_energy_exact():
    rs = ReplaySensor(SINE)
    with Meter([rs], period_s=0.001, max_samples=50) as m:
        with m.window('long') as w: time.sleep(0.3)
        tr = m.tracks[0]
        assert len(tr.samples) <= 50 < tr.n_samples
    r = w.result
    truth = SINE_E(r.end_s - rs.t0_s) - SINE_E(r.start_s - rs.t0_s)
    assert r.energy_j == pytest.approx(truth, rel=1e-3)
    assert r.polling_energy_by_domain_j['replay:0'] == pytest.approx(truth, rel=1e-3)
    df = r.trace()
    assert df.attrs['truncated'] and 'trace-truncated' in r.flags


class Backwards(ReplaySensor):
    "Every third reading carries a timestamp from the past."
    n = 0
    def read(self):
        r = super().read()
        self.n += 1
        return Reading(r.t_s - 1.0, r.energy_j, r.power_w) if self.n % 3 == 0 else r


def test_timestamps_strictly_increase_even_if_a_sensor_goes_back():
    with Meter([Backwards(SINE)], period_s=0.002) as m:
        time.sleep(0.1)
    ts = [s[0] for s in m.tracks[0].samples]
    assert len(ts) > 10 and all(b > a for a, b in zip(ts, ts[1:]))


def test_sampler_never_runs_faster_than_its_period():
    with Meter([ReplaySensor(SINE)], period_s=0.01) as m: time.sleep(0.3)
    stats = m.sampler_stats()
    assert stats['ticks'] >= 5 and stats['achieved_period_s'] >= 0.0099 and stats['jitter_p50_s'] >= 0


def test_sampler_runs_without_errors_while_windows_open_and_close():
    with Meter([ReplaySensor(SINE), ReplaySensor(SINE, domain='b')], period_s=0.002) as m:
        for k in range(20):
            m.begin_window(f'a{k}'); time.sleep(0.002)
            m.next_window(f'a{k}', f'b{k}'); time.sleep(0.002)
            m.end_window(f'b{k}')
        assert m._open == {}
    assert m.sampler_stats()['sampler_errors'] == []


def test_stop_ends_the_thread():
    m = Meter([ReplaySensor(SINE)], period_s=0.01).start()
    assert m.running and any(t.name == 'energytok-meter' for t in threading.enumerate())
    m.stop()
    assert not m.running


# ---- windows: edges, sync, nesting, errors --------------------------------------------------------------------------
def test_sync_runs_before_each_edge():
    calls = []
    with Meter([ReplaySensor(SINE)], period_s=0.01, sync=lambda: calls.append(time.monotonic())) as m:
        m.begin_window('a'); time.sleep(0.02)
        a = m.next_window('a', 'b'); time.sleep(0.02)
        b = m.end_window('b')
    assert len(calls) == 3
    assert calls[0] <= a.start_s and calls[1] <= a.end_s == b.start_s and calls[2] <= b.end_s


def test_sync_makes_asynchronous_work_count_inside_the_window():
    "Work queued before the end edge (a thread drawing extra power) finishes inside the window when sync waits for it."
    trace = Trace([0.0, 100.0], [100.0, 100.0])
    rs = ReplaySensor(trace)
    done = threading.Event()
    def worker(): time.sleep(0.1); done.set()
    with Meter([rs], period_s=0.01, sync=lambda: done.wait(5)) as m:
        with m.window('w') as w:
            threading.Thread(target=worker).start()
    assert done.is_set() and w.result.duration_s >= 0.1
    assert w.result.energy_j == pytest.approx(100.0 * w.result.duration_s, rel=1e-6)


def test_nested_and_overlapping_windows():
    rs = ReplaySensor(load_trace(DATA/'replay_steps.json'))
    with Meter([rs], period_s=0.01) as m:
        m.begin_window('outer'); m.begin_window('a'); time.sleep(0.1)
        m.begin_window('b'); time.sleep(0.1)
        a = m.end_window('a'); time.sleep(0.1)
        b = m.end_window('b'); outer = m.end_window('outer')
    E = lambda t: rs.at(t - rs.t0_s)[0]
    for r in (a, b, outer): assert r.energy_j == pytest.approx(E(r.end_s) - E(r.start_s), rel=1e-3)
    assert outer.energy_j >= a.energy_j and outer.energy_j >= b.energy_j
    assert outer.start_s <= a.start_s < b.start_s < a.end_s < b.end_s <= outer.end_s


@pytest.mark.parametrize('action, exc, match', [
    (lambda m: (m.begin_window('x'), m.begin_window('x')), ValueError, "'x' is already open"),
    (lambda m: m.end_window('nope'), ValueError, "no open window called 'nope'"),
    (lambda m: m.begin_window(''), TypeError, 'name: expected a non-empty string'),
    (lambda m: m.next_window('nope', 'y'), ValueError, "no open window called 'nope'"),
])
def test_window_misuse_is_refused(action, exc, match):
    with Meter([ReplaySensor(SINE)], period_s=0.01) as m:
        with pytest.raises(exc, match=match): action(m)


@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(sensors=[]), ValueError, 'sensors: expected at least one'),
    (dict(period_s=0), ValueError, 'period_s'),
    (dict(period_s=float('nan')), ValueError, 'period_s'),
    (dict(max_samples=1), ValueError, 'max_samples'),
    (dict(sync='torch'), TypeError, 'sync: expected a callable'),
])
def test_meter_refuses_bad_arguments(kwargs, exc, match):
    kwargs.setdefault('sensors', [ReplaySensor(SINE)])
    with pytest.raises(exc, match=match): Meter(**kwargs)


def test_duplicate_domains_refused():
    with pytest.raises(ValueError, match='distinct domains'): Meter([ReplaySensor(SINE), ReplaySensor(SINE)])


def test_window_needs_a_running_meter_to_open_not_to_close():
    with pytest.raises(RuntimeError, match='not running'): Meter([ReplaySensor(SINE)]).begin_window('w')
    rs = ReplaySensor(SINE)
    with Meter([rs], period_s=0.01) as m:
        m.begin_window('w'); time.sleep(0.05)
    time.sleep(0.05)
    r = m.end_window('w')  # after stop: the edges are read directly
    truth = SINE_E(r.end_s - rs.t0_s) - SINE_E(r.start_s - rs.t0_s)
    assert r.counter_energy_by_domain_j['replay:0'] == pytest.approx(truth, rel=1e-4)  # interpolated across the gap
    assert any(f.startswith('sampling-gap') for f in r.flags)  # no samples while stopped, and it says so


def test_exception_in_block_closes_and_flags_the_window():
    with Meter([ReplaySensor(SINE)], period_s=0.01) as m:
        w = m.window('boom')
        with pytest.raises(ZeroDivisionError):
            with w: 1 / 0
        assert 'boom' not in m._open
    assert 'exception-in-window: ZeroDivisionError' in w.result.flags


# ---- sensor faults never reach the workload -------------------------------------------------------------------------
class Failing(ReplaySensor):
    "Fails while `broken`; any exception type."
    broken, error = False, ZeroDivisionError
    def read(self):
        if self.broken: raise self.error('scripted failure')
        return super().read()


def test_failure_mid_window_is_flagged_and_bridged():
    s = Failing(SINE)
    with Meter([s], period_s=0.01) as m:
        with m.window('w') as w:
            time.sleep(0.05); s.broken = True; time.sleep(0.1); s.broken = False; time.sleep(0.05)
    r = w.result
    truth = SINE_E(r.end_s - s.t0_s) - SINE_E(r.start_s - s.t0_s)
    assert r.energy_j == pytest.approx(truth, rel=1e-3)  # the counter bridges the gap
    kinds = {f.split(':')[0] for f in r.flags}
    assert {'sensor-error', 'sampling-gap'} <= kinds
    assert any('ZeroDivisionError: scripted failure' in f for f in r.flags)


def test_one_failed_read_at_the_end_edge_is_held_and_flagged():
    s = Failing(SINE)
    with Meter([s], period_s=0.05) as m:  # hold_s = 0.15 s: the last good sample is at most one period back
        m.begin_window('w'); time.sleep(0.2)
        s.broken = True
        r = m.end_window('w')
    assert r.energy_j > 0 and r.missing_domains == []
    assert any(f.startswith('edge-extrapolated:replay:0') for f in r.flags)
    assert any(f.startswith('sensor-error:replay:0') for f in r.flags)


def test_sensor_that_dies_before_the_end_has_missing_energy_not_a_partial_figure():
    s = Failing(SINE)
    with Meter([s, ReplaySensor(SINE, domain='ok')], period_s=0.01) as m:
        m.begin_window('w'); time.sleep(0.05)
        s.broken = True; time.sleep(0.1)
        r = m.end_window('w')
    assert r.energy_by_domain_j['replay:0'] is None and r.energy_by_domain_j['ok'] > 0
    assert r.energy_j is None and r.avg_power_w is None and r.missing_domains == ['replay:0']
    assert r.provenance['replay:0'] == 'missing:replay'
    assert any(f.startswith('energy-missing:replay:0: no valid reading at or near the end') for f in r.flags)


def test_sensor_that_never_answers():
    s = Failing(SINE); s.broken = True
    with Meter([s, ReplaySensor(SINE, domain='ok')], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.03)
    r = w.result
    assert r.energy_by_domain_j['replay:0'] is None and r.energy_by_domain_j['ok'] > 0 and r.energy_j is None
    assert any(f.startswith('energy-missing:replay:0: no valid reading at or after the start') for f in r.flags)


def test_nvml_error_mid_window_through_the_meter():
    # a transient error (a lost GPU stays lost until reset, as on hardware); a continuous counter: this is about the gap
    fake = FakeNVML([dict(trace=SINE, counter_update_s=0)])
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu], period_s=0.01) as m:
        with m.window('w') as w:
            time.sleep(0.05); fake.devices[0]['error'] = pynvml.NVML_ERROR_TIMEOUT
            time.sleep(0.1); fake.devices[0]['error'] = None; time.sleep(0.05)
    r = w.result
    rs = fake.devices[0]['replay']
    truth = rs.at(r.end_s - rs.t0_s)[0] - rs.at(r.start_s - rs.t0_s)[0]
    assert r.energy_j == pytest.approx(truth, rel=0.01)  # 1 mJ counter resolution and read timing
    assert any('Timeout' in f for f in r.flags) and r.provenance == {'gpu:0': 'nvml-energy-counter'}


def test_nvml_counter_wrap_inside_a_window():
    fake = FakeNVML([dict(power_w=400.0, counter_start_mj=2**64 - 40_000, counter_update_s=0)])  # continuous; wraps after 100 ms
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.25)
    assert gpu.method()['counter_wraps'] == 1
    r = w.result
    assert r.counter_energy_by_domain_j['gpu:0'] == pytest.approx(400.0 * r.duration_s, rel=0.01)
    assert r.polling_energy_by_domain_j['gpu:0'] == pytest.approx(400.0 * r.duration_s, rel=1e-6)


def test_counter_refresh_period_shows_as_discrepancy_and_short_window_flag():
    fake = FakeNVML([dict(trace=load_trace(DATA/'replay_steps.json'), counter_update_s=0.1)])
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu], period_s=0.01) as m:
        time.sleep(0.3)
        with m.window('w') as w: time.sleep(0.35)
    r = w.result
    assert any(f.startswith('short-window:gpu:0') for f in r.flags)
    assert set(r.discrepancy_by_domain) == {'gpu:0'}
    rs = fake.devices[0]['replay']
    truth = rs.at(r.end_s - rs.t0_s)[0] - rs.at(r.start_s - rs.t0_s)[0]
    # polling follows the truth closely; the counter lags by up to one refresh of the step trace
    assert r.polling_energy_by_domain_j['gpu:0'] == pytest.approx(truth, rel=0.02)
    assert abs(r.counter_energy_by_domain_j['gpu:0'] - truth) <= 400 * 0.1 * 2


def test_rapl_counter_with_wraparound_through_the_meter(tmp_path):
    write_fake_powercap(tmp_path, dram=False, energy_uj=0, max_energy_range_uj=1_000_000)
    path = tmp_path/'intel-rapl:0'/'energy_uj'
    sensor = RAPLSensor(tmp_path/'intel-rapl:0', 'cpu:0-package')
    stop, written = threading.Event(), []
    def writer():  # +50 mJ every 2 ms: 25 W, wrapping every 40 ms
        raw = 0
        while not stop.is_set():
            raw = (raw + 50_000) % 1_000_000
            tmp = path.with_suffix('.tmp'); tmp.write_text(f'{raw}\n'); os.replace(tmp, path)
            written.append(time.monotonic()); time.sleep(0.002)
    th = threading.Thread(target=writer); th.start()
    try:
        with Meter([sensor], period_s=0.005) as m:
            with m.window('w') as w: time.sleep(0.3)
    finally:
        stop.set(); th.join()
    r = w.result
    # below 10 ms the sensor is read in the sampler process: its state, wraps included, is reported through the result
    assert m.sampler_used == 'process' and r.method_by_domain['cpu:0-package']['counter_wraps'] >= 3
    assert r.provenance == {'cpu:0-package': 'rapl'} and r.polling_energy_by_domain_j == {}
    # 50 mJ per write that landed inside the window, give or take the writes next to the edges
    inside = sum(r.start_s <= t <= r.end_s for t in written)
    assert inside > 20 and abs(r.energy_j - 0.05 * inside) <= 0.05 * 3


# ---- idle baseline, mixing estimate and measurement, results --------------------------------------------------------
def test_idle_baseline_and_subtraction():
    trace = Trace([0.0, 1.0], [60.0, 60.0])
    with Meter([ReplaySensor(trace, domain='gpu:0')], period_s=0.01) as m:
        idle = m.measure_idle(0.1)
        with m.window('w') as w: time.sleep(0.05)
    assert idle.power_w == pytest.approx(60.0) and idle.power_by_domain_w == {'gpu:0': pytest.approx(60.0)}
    assert w.result.idle_power_w == pytest.approx(60.0)
    assert w.result.energy_idle_subtracted_j == pytest.approx(0.0, abs=1e-6)
    assert w.result.energy_j == pytest.approx(60.0 * w.result.duration_s)  # total stays the primary figure
    with pytest.raises(ValueError, match='duration_s'): m.measure_idle(-1)


def test_estimate_beside_measurement_is_labelled():
    with Meter([ReplaySensor(SINE, domain='gpu:0'), CodecarbonCPUEstimate()], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.1)
    r = w.result
    assert r.estimated and r.estimated_domains == ['cpu-estimate'] and 'estimated:cpu-estimate' in r.flags
    assert r.provenance == {'gpu:0': 'replay', 'cpu-estimate': 'estimate:codecarbon-cpu-load'}
    assert r.energy_j == pytest.approx(sum(r.energy_by_domain_j.values()))
    assert r.method_by_domain['cpu-estimate']['tdp_w'] > 0
    assert 'ESTIMATE' in repr(r) and '(estimate)' in r._repr_html_()


def test_result_serialises_and_peak_is_bounded():
    with Meter([ReplaySensor(load_trace(DATA/'replay_steps.json'))], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.2)
    r = w.result
    d = json.loads(json.dumps(r.to_dict()))
    assert d['energy_j'] == pytest.approx(r.energy_j) and d['n_samples'] == r.n_samples >= 5
    assert 80.0 - 1e-9 <= r.peak_power_w <= 400.0 + 1e-9 and r.peak_power_by_domain_w['replay:0'] <= 400.0 + 1e-9
    assert r.avg_power_w == pytest.approx(r.energy_j / r.duration_s)


def test_trace_rows_and_plot():
    import matplotlib; matplotlib.use('Agg')
    rs = ReplaySensor(SINE)
    with Meter([rs], period_s=0.01) as m:
        time.sleep(0.1)
        with m.window('w') as w: time.sleep(0.15)
    df = w.result.trace(margin_s=0.05)
    edges = df[df.kind == 'edge']
    assert list(edges.t_s) == pytest.approx([0.0, w.result.duration_s])
    assert edges.energy_j.iloc[-1] == pytest.approx(w.result.counter_energy_by_domain_j['replay:0'])
    assert (df[df.kind == 'before'].t_s < 0).all() and len(df[df.kind == 'before']) >= 2
    assert df.t_s.is_monotonic_increasing
    ax = plot_window(w.result)
    spans = [p for p in ax.patches if p.get_label().startswith('window')]
    assert len(spans) == 1 and 'J' in ax.get_title()


# ---- replay modes and the validation's rows ---------------------------------------------------------------------------
def test_replay_power_only_stepped_and_averaged_modes():
    clock = type('Clock', (), {'t': 0.0, '__call__': lambda self: self.t})()
    steps = Trace([0.0, 1.0, 1.001, 4.0], [100.0, 100.0, 400.0, 400.0])
    plain = ReplaySensor(steps, clock=clock, counter=False)
    stepped = ReplaySensor(steps, clock=clock, counter_update_s=0.1, resolution_j=1e-3)
    averaged = ReplaySensor(steps, clock=clock, averaging_window_s=1.0)
    assert (plain.has_counter, stepped.update_period_s, stepped.resolution_j, averaged.averaging_window_s) == (False, 0.1, 1e-3, 1.0)
    clock.t = 0.0; [s.read() for s in (plain, stepped, averaged)]
    clock.t = 0.25
    assert plain.read().energy_j is None and plain.read().power_w == pytest.approx(100.0)
    assert stepped.read().energy_j == pytest.approx(20.0)  # the last refresh, at 0.2 s
    clock.t = 1.5
    assert averaged.read().power_w == pytest.approx(100 + 300 * 0.499, rel=1e-3)
    with pytest.raises(ValueError, match='counter_update_s'): ReplaySensor(steps, counter_update_s=0)


def test_uncertainty_vs_discrepancy_rows_for_the_validation():
    from energytok.meter import uncertainty_vs_discrepancy
    fake = FakeNVML([dict(trace=load_trace(DATA/'replay_steps.json'), counter_update_s=0.1)])
    gpu = nvml_statuses(fake, env={})[0].sensor
    with Meter([gpu, ReplaySensor(SINE, domain='cpu', counter=False)], period_s=0.01) as m:
        with m.window('a') as a: time.sleep(0.5)
    rows = uncertainty_vs_discrepancy([a.result, a.result.to_dict()])
    assert len(rows) == 2 and {r['domain'] for r in rows} == {'gpu:0'}  # the power-only domain has nothing to compare
    r = rows[0]
    assert r['discrepancy_j'] == pytest.approx(r['polling_j'] - r['counter_j'])
    assert r['allowed_j'] == pytest.approx(r['counter_uncertainty_j'] + r['polling_uncertainty_j'])
    assert r['within'] == (abs(r['discrepancy_j']) <= r['allowed_j']) and r['within']
