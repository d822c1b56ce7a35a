"""The meter's uncertainty: the running sums equal a direct computation over any window (hypothesis), the stated
uncertainty covers the true error on replayed traces through polled power and through NVML- and RAPL-like counters,
it is not uselessly wide, and the accuracy flags say what they should."""
import json, math, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from energytok.accuracy import ReplayMeter, VirtualClock, replay_windows, spike_trace
from energytok.meter import Meter, _Track, _window_shape
from energytok.sensors import Reading, ReplaySensor, Sensor, Trace, load_trace
from energytok.uncertainty import ShapeSums, local_richardson_j, polled_terms_j, total_j

DATA = Path(__file__).parents[1] / 'data'
TRACES = dict(sine=load_trace(DATA/'replay_sine.csv'), steps=load_trace(DATA/'replay_steps.json'), spikes=spike_trace(),
              gpu_like=load_trace(DATA/'replay_gpu_like.csv'))


# ---- the running sums are exact for every window ------------------------------------------------------------------
class Scripted(Sensor):
    domain, has_power, provenance, power_provenance = 'scripted', True, 'replay', 'replay'
    def __init__(self, readings): self.readings = iter(readings)
    def read(self): return next(self.readings)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-4, 0.05), st.floats(0, 1000)), min_size=3, max_size=40),
       st.floats(0, 1), st.floats(0, 1))
def test_window_sums_equal_a_direct_computation(samples, c0, c1):
    t, readings = 0.0, []
    for dt, p in samples:
        t += dt; readings.append(Reading(t, power_w=p))
    ts = np.array([r.t_s for r in readings]); ps = np.array([r.power_w for r in readings])
    a, b = sorted((ts[0] + c0 * (ts[-1] - ts[0]), ts[0] + c1 * (ts[-1] - ts[0])))
    tr = _Track(Scripted(readings), max_samples=5)  # a small buffer: the sums must not need the samples
    tr.sample()
    ea, acc = tr.open_edge(a), tr.open_acc(a)
    after = 0
    for r in readings[1:]:  # the end is set only at close: a sample or two after it may come in first, as in a live meter
        tr.sample(); after += r.t_s > b
        if after == 2: break
    acc.b_s = b
    eb = tr.open_edge(b)
    if not (ea.resolved and eb.resolved): return
    coherent, sq, tv, n = _window_shape(acc, ea, eb)
    # direct: the window's own sequence, its edges as the outer samples
    inside = (ts > a) & (ts <= b)
    assert n == inside.sum()
    seq_t = np.concatenate([[a], ts[inside], [b]]); seq_p = np.concatenate([[ea.power_w], ps[inside], [eb.power_w]])
    if len(seq_t) != len(np.unique(seq_t)): return  # an edge on a sample: the window's sequence repeats a time
    d = [local_richardson_j(*x) for x in zip(seq_t[:-2], seq_p[:-2], seq_t[1:-1], seq_p[1:-1], seq_t[2:], seq_p[2:])]
    par = [sum(d[0::2]), sum(d[1::2])]
    assert sq == pytest.approx(sum(x * x for x in d), rel=1e-6, abs=1e-9)
    assert tv == pytest.approx(float(np.sum(np.diff(seq_t) * np.abs(np.diff(seq_p)))), rel=1e-6, abs=1e-9)
    assert coherent == pytest.approx(max(map(abs, par)), rel=1e-6, abs=1e-9)


def test_richardson_is_three_times_the_error_of_a_smooth_signal_and_the_bound_of_a_step():
    t = np.arange(0, 1.0001, 0.01) + 0.003
    p = 250 + 150 * np.sin(np.pi * t)
    s = ShapeSums()
    for x, y in zip(t, p): s.push(x, y)
    trap = float(np.sum(np.diff(t) * (p[1:] + p[:-1]) / 2))
    exact = 250 * (t[-1] - t[0]) + 150 / np.pi * (np.cos(np.pi * t[0]) - np.cos(np.pi * t[-1]))
    assert max(map(abs, s.sums)) == pytest.approx(3 * abs(trap - exact), rel=0.02)
    assert local_richardson_j(0, 80, 0.01, 400, 0.02, 400) == pytest.approx(0.01 * 320 / 2)


def test_terms_add_up_and_a_sparse_window_takes_the_monotone_bound():
    dense = polled_terms_j(1.0, 0.0, 0.0, 1.0, 100, variation_j=50.0)
    sparse = polled_terms_j(1.0, 0.0, 0.0, 1.0, 2, variation_j=50.0)
    assert dense['sampling'] == 1.0 and sparse['sampling'] == 25.0
    assert total_j(polled_terms_j(1.0, 0.0, 0.0, 1.0, 100, averaging_j=2.0, gaps_j=3.0, energy_j=100.0)) == pytest.approx(6.0 + 1e-7)


# ---- coverage on replayed traces ---------------------------------------------------------------------------------
def pooled(trace, period, seeds=3, n=40, **kw):
    return pd.concat([replay_windows(trace, period, 1.0, n, seed=s, **kw) for s in range(seeds)])


# where content is regular relative to the period, the estimate (built for random content) is wider than 5x; the
# accuracy chapter shows and explains these cells: they must still cover, and must not grow wider than this
KNOWN_WIDE = {('sine', 0.5): 12, ('gpu_like', 1e-3): 8, ('gpu_like', 1e-2): 12, ('spikes', 0.5): 6}  # spikes: 4.2-5.2 by seed


@pytest.mark.parametrize('name', list(TRACES))
def test_polled_power_covers_the_true_error(name):
    cells = {p: pooled(TRACES[name], p, counter=False) for p in (1e-3, 1e-2, 0.1, 0.5)}
    cover = {p: w.covered.mean() for p, w in cells.items()}
    allw = pd.concat(cells.values())
    assert allw.covered.mean() >= 0.95, cover
    assert min(cover.values()) >= 0.9, cover  # 120 windows a cell: 95 % shows as 90-100 %
    for p, w in cells.items():  # not uselessly wide where there is an error to speak of
        if w.rel_error.median() >= 1e-4:
            limit = KNOWN_WIDE.get((name, p), 5)
            assert w.rel_uncertainty.median() <= limit * w.rel_error.median(), (p, w.rel_uncertainty.median(), w.rel_error.median())


@pytest.mark.parametrize('label, kw', [('nvml-like', dict(counter_update_s=0.1, resolution_j=1e-3)),
                                       ('rapl-like', dict(counter_update_s=1e-3, resolution_j=15.3e-6))])
@pytest.mark.parametrize('name', ['steps', 'gpu_like'])
def test_counters_cover_the_true_error_and_are_not_wide(name, label, kw):
    w = pd.concat([pooled(TRACES[name], p, seeds=2, n=40, **kw) for p in (1e-3, 0.05)])
    assert w.covered.mean() >= 0.95
    assert w.rel_uncertainty.median() <= 5 * w.rel_error.median()


def test_a_coarse_polled_figure_is_flagged_uncertain_and_a_fine_counter_is_not():
    coarse = replay_windows(TRACES['steps'], 0.2, n_windows=10, counter=False)
    fine = replay_windows(TRACES['steps'], 0.01, n_windows=10, counter_update_s=1e-3, resolution_j=15.3e-6)
    assert coarse.flagged_uncertain.all() and (coarse.rel_uncertainty > 0.01).all()
    assert not fine.flagged_uncertain.any() and (fine.rel_uncertainty < 0.01).all()
    assert (fine.main_term == 'refresh').all()


def test_an_averaged_reading_lags_is_flagged_and_covered():
    clock = VirtualClock()
    s = ReplaySensor(TRACES['steps'], domain='gpu:0', clock=clock, counter=False, averaging_window_s=1.0)
    m = ReplayMeter([s], 0.01, clock)
    m._tick()
    results = []
    for k in range(12):
        for _ in range(300 if k == 0 else 20): clock.t_s += 0.01; m._tick()
        clock.t_s += 0.003; m.begin_window('w')
        for _ in range(150 if k % 2 else 40): clock.t_s += 0.01; m._tick()
        clock.t_s += 0.004; results.append(m.end_window('w'))
    for r in results:
        assert any(f.startswith('averaged-power:gpu:0') for f in r.flags)
        true = s.at(r.end_s - s.t0_s)[0] - s.at(r.start_s - s.t0_s)[0]
        short = r.duration_s < 1.0
        assert any('shorter than the average' in f for f in r.flags) == short
        if not short: assert abs(r.energy_j - true) <= r.energy_uncertainty_j
        assert r.uncertainty_terms_by_domain['gpu:0']['averaging'] >= 0


# ---- flags and fields -------------------------------------------------------------------------------------------
class LowPower(ReplaySensor):
    "Its power field reads 20 % low."
    def read(self):
        r = super().read()
        return Reading(r.t_s, r.energy_j, 0.8 * r.power_w)


def test_counter_and_polling_that_disagree_are_flagged_and_consistent_ones_are_not():
    with Meter([LowPower(TRACES['sine'], domain='bad'), ReplaySensor(TRACES['sine'], domain='good')], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.4)
    flags = w.result.flags
    assert any(f.startswith('counter-polling-disagree:bad') for f in flags)
    assert not any(f.startswith('counter-polling-disagree:good') for f in flags)


def test_every_figure_carries_its_uncertainty_and_a_missing_one_has_none():
    class Dead(ReplaySensor):
        def read(self): raise RuntimeError('gone')
    with Meter([ReplaySensor(TRACES['sine'], domain='gpu:0'), Dead(TRACES['sine'], domain='gpu:1')], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.1)
    r = w.result
    assert r.uncertainty_by_domain_j['gpu:1'] is None and r.energy_uncertainty_j is None
    assert r.uncertainty_by_domain_j['gpu:0'] > 0 and r.counter_uncertainty_by_domain_j['gpu:0'] > 0
    assert set(r.uncertainty_terms_by_domain['gpu:0']) == {'refresh', 'resolution', 'edges', 'floor'}
    d = json.loads(json.dumps(r.to_dict()))
    assert {'energy_uncertainty_j', 'uncertainty_by_domain_j', 'counter_uncertainty_by_domain_j',
            'polling_uncertainty_by_domain_j', 'sampling_coverage_by_domain', 'uncertainty_terms_by_domain'} <= set(d)
    with Meter([ReplaySensor(TRACES['sine'], domain='gpu:0')], period_s=0.01) as m:
        with m.window('w') as w: time.sleep(0.1)
    assert w.result.energy_uncertainty_j == pytest.approx(w.result.uncertainty_by_domain_j['gpu:0'])
    assert '±' in repr(w.result) and '± (J)' in w.result._repr_html_()


def test_a_sampling_gap_is_charged_to_the_polled_figure():
    class Gappy(ReplaySensor):
        broken = False
        def read(self):
            if self.broken: raise RuntimeError('busy')
            return super().read()
    s = Gappy(TRACES['sine'], domain='gpu:0', counter=False)
    with Meter([s], period_s=0.01) as m:
        with m.window('w') as w:
            time.sleep(0.1); s.broken = True; time.sleep(0.3); s.broken = False; time.sleep(0.1)
    r = w.result
    assert any(f.startswith('sampling-gap:gpu:0') for f in r.flags)
    assert r.uncertainty_terms_by_domain['gpu:0']['gaps'] > 0
    true = s.at(r.end_s - s.t0_s)[0] - s.at(r.start_s - s.t0_s)[0]
    assert abs(r.energy_j - true) <= r.energy_uncertainty_j
