"""The report at every size and for every table it can meet: no stage crashes at ordinary sizes, power figures stay
finite and shrink with the runs, a figure that cannot be computed says why, runs without the metric are counted and
left out, and the fast paths give the results of the slow ones (beyond the bootstrap's Monte-Carlo error).

CI installs the newest numpy, scipy, statsmodels and pandas: these are the tests that catch a new release breaking
users (statsmodels 0.15 made `solve_power` return a 1-element array; its ANOVA power solver met a NaN at 833 runs).
"""
import contextlib, io, json, math, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import stats

from energytok.card import simulated_records
from energytok.cli import main
from energytok.report import compare_runs
from energytok.stats_anova import anova, fit_cells, model_terms
from energytok.stats_compare import (P_FLOOR, hedges_g, pairwise, prob_better, studentized_range_crit,
                                     studentized_range_sf)
from energytok.stats_describe import bca_interval, describe_runs, prepare_runs, simulate_runs, trimmed_mean_ci
from energytok.stats_power import anova_mde, anova_n, anova_power, tost, two_sample_mde, two_sample_n, two_sample_power
from energytok.store import RUN_COLUMNS, RunStore, load_runs, make_record, read_records

EFFECTS = {'dtype': {'fp32': 1.0, 'bf16': 0.8, 'fp16': 0.82}, 'batch_size': {1: 1.0, 4: 0.5, 16: 0.22, 64: 0.12}}
SECTIONS = ('## Provenance', '## Summary', '## Configurations', '## ANOVA', '## Assumption checks', '## Pairwise comparisons',
            '## Equivalence', '## Power and detectable effects')


def strict_json(text): return json.loads(text, parse_constant=lambda c: pytest.fail(f'non-strict JSON constant {c}'))


def sweep_of(k, n, cv=0.08, seed=0):
    "k configurations (one factor) of n runs each, simulated and labelled as such."
    levels = {f'c{i:02d}': 1.0 + 0.03 * i for i in range(k)}
    return simulate_runs({'setting': levels}, n_reps=n, cv=cv, seed=seed)


def assert_complete(rep):
    "Every stage computed, every format rendered, power figures finite."
    assert rep.not_computed == {}, rep.not_computed
    md = rep.to_markdown()
    for s in SECTIONS: assert s in md, s
    assert rep.to_html().startswith('<!DOCTYPE html>')
    data = strict_json(rep.to_json())
    assert data['not_computed'] == {} and data['power']['mde'] > 0
    pw = rep.power
    for v in (pw.mde, pw.mde_all_pairs, pw.anova_mde_f): assert math.isfinite(v) and v > 0
    return data


# ---- the whole report at the sizes of issue 8 ----

@pytest.mark.parametrize('n_runs', [24, 240, 1_200, 12_000])
def test_whole_report_on_simulated_sweeps(n_runs, tmp_path):
    runs = simulated_records(simulate_runs(EFFECTS, n_reps=n_runs // 12, cv=0.08, seed=3))
    assert len(runs) == n_runs
    rep = compare_runs(runs, 'j_per_token', ['dtype', 'batch_size'], n_boot=500, target=0.95)
    data = assert_complete(rep)
    assert len(rep.cards) == 12 and [p.name for p in rep.plots] == ['box_strip', 'interaction', 'forest', 'qq', 'residuals_order', 'ecdf', 'pareto']
    assert data['power']['runs_needed'] >= 2 and len(data['pairwise']['pairs']) == 66
    paths = rep.save(tmp_path / 'rep')
    assert all(Path(p).stat().st_size > 0 for p in paths.values())


@pytest.mark.parametrize('per_config', [83, 833])
@pytest.mark.parametrize('command', ['compare', 'report'])
def test_commands_at_the_sizes_that_crashed(per_config, command, tmp_path):
    # 12 configurations of 83 runs (solve_power's 1-element array) and of 833 runs (a NaN in anova_mde's solver)
    runs = simulated_records(simulate_runs(EFFECTS, n_reps=per_config, cv=0.08, seed=1))
    if command == 'compare':
        path = tmp_path / 'runs.csv'; runs.drop(columns=['levers', 'energy_by_domain_j', 'flags']).to_csv(path, index=False)
        argv = ['compare', str(path), '--metric', 'j_per_token', '--by', 'dtype,batch_size', '--json']
    else:
        path = tmp_path / 'runs.jsonl'
        with open(path, 'w') as f:
            for r in runs.to_dict(orient='records'): f.write(json.dumps(make_record(**r), allow_nan=False) + '\n')
        argv = ['report', str(path), '--out', str(tmp_path / 'out'), '--no-figures', '--json']
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert main(argv) == 0
    data = strict_json(buf.getvalue())
    assert data['not_computed'] == {} and math.isfinite(data['power']['anova_mde_f'])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 100_000), k=st.integers(2, 40), cv=st.floats(0.005, 0.5), seed=st.integers(0, 1000))
def test_report_completes_and_power_shrinks_with_the_runs(n, k, cv, seed):
    n = min(n, max(2, 120_000 // k)) # keep each example under about 240,000 runs in all
    small = compare_runs(sweep_of(k, n, cv, seed), 'j_per_token', 'setting', figures=False, cards=False, n_boot=200)
    big = compare_runs(sweep_of(k, 2 * n, cv, seed), 'j_per_token', 'setting', figures=False, cards=False, n_boot=200)
    for rep in (small, big): assert_complete(rep)
    # standardised detectable effects are the design's, not the sample's: they shrink as runs are added
    assert small.power.mde / small.power.sd > big.power.mde / big.power.sd
    assert small.power.mde_all_pairs / small.power.sd > big.power.mde_all_pairs / big.power.sd
    assert small.power.anova_mde_f > big.power.anova_mde_f
    assert math.isclose(small.power.mde / small.power.sd, two_sample_mde(n), rel_tol=1e-9)


@pytest.mark.parametrize('n, k', [(2, 2), (2, 40), (100_000, 2), (2_500, 40)])
def test_report_at_the_corners(n, k):
    rep = compare_runs(sweep_of(k, n), 'j_per_token', 'setting', figures=False, cards=False, n_boot=200)
    assert_complete(rep)
    assert len(rep.pairwise.table) == k * (k - 1) // 2


@pytest.mark.parametrize('n', [2, 3, 10, 83, 833, 10_000, 100_000])
def test_power_functions_are_finite_and_monotone(n):
    for k in (2, 12, 40):
        pairs = k * (k - 1) // 2
        d, d2 = two_sample_mde(n, 0.05 / pairs), two_sample_mde(n + 1, 0.05 / pairs)
        f, f2 = anova_mde(n, k), anova_mde(n + 1, k)
        assert 0 < d2 < d < math.inf and 0 < f2 < f < math.inf
        assert math.isclose(two_sample_power(d, n, 0.05 / pairs), 0.8, rel_tol=1e-6)
        assert math.isclose(anova_power(f, n, k), 0.8, rel_tol=1e-6)
    assert two_sample_n(0.01) > two_sample_n(0.02) > 2 and anova_n(0.01, 12) > anova_n(0.02, 12)


def test_power_matches_statsmodels_where_it_works():
    from statsmodels.stats.power import FTestAnovaPower, TTestIndPower
    for d, n in [(0.5, 10), (1.2, 4), (0.2, 200)]:
        assert math.isclose(two_sample_power(d, n), TTestIndPower().power(d, n, 0.05), rel_tol=1e-9)
    for f, n, k in [(0.25, 10, 4), (0.4, 6, 12)]:
        assert math.isclose(anova_power(f, n, k), FTestAnovaPower().power(f, n * k, 0.05, k_groups=k), rel_tol=1e-9)


# ---- what cannot be computed, and runs that are left out ----

def test_a_metric_with_no_variation_is_reported_as_such():
    runs = simulate_runs(n_reps=5).assign(j_per_token=0.5) # once: F = 1.40, p = 0.26 from rounding noise
    with pytest.raises(ValueError, match='no variation: all 30 runs have j_per_token = 0.5'):
        anova(runs, 'j_per_token', 'dtype,batch_size')
    rep = compare_runs(runs, 'j_per_token', 'dtype,batch_size', figures=False, cards=False, n_boot=200)
    assert rep.anova is None and rep.pairwise is None and set(rep.not_computed) == {'assumptions', 'anova', 'pairwise', 'equivalence', 'power'}
    assert all(v.startswith('no variation') for v in rep.not_computed.values())
    md = rep.to_markdown()
    assert '## Not computed' in md and 'no variation' in md and '## Configurations' in md
    strict_json(rep.to_json())
    fixed = simulate_runs(n_reps=5).assign(tokens=lambda d: d.batch_size * 128.0) # varies only between configurations
    with pytest.raises(ValueError, match='no variation within configurations'):
        pairwise(fixed, 'tokens', 'batch_size', method='tukey')


def test_adjusted_p_values_beyond_precision_are_a_bound():
    runs = simulate_runs({'dtype': {'a': 1.0, 'b': 3.0, 'c': 0.2}}, n_reps=5000, cv=0.01)
    pw = pairwise(runs, 'j_per_token', 'dtype', method='tukey')
    assert pw.below_precision.all()
    md = pw.to_markdown()
    assert md.count(f'| \\< {P_FLOOR:g} |') == 3 and 'beyond double precision' in md  # '<' escaped in markdown
    pairs = pw.to_dict()['pairs']
    assert all(p['p_adj'] is None and p['p_adj_below'] == P_FLOOR for p in pairs)
    mild = pairwise(simulate_runs({'dtype': {'a': 1.0, 'b': 1.05}}, n_reps=40, seed=2), 'j_per_token', 'dtype', method='tukey')
    assert not mild.below_precision.any() and mild.to_dict()['pairs'][0]['p_adj'] is not None


def test_a_configuration_with_one_run_is_refused_before_it_is_compared():
    runs = simulate_runs(n_reps=3)
    one = runs.drop(runs.index[(runs.dtype == 'bf16') & (runs.batch_size == 8)][1:])
    t = prepare_runs(one, 'j_per_token', 'dtype,batch_size', min_runs=1)
    for method in ('tukey', 'games-howell', 'holm'):
        with pytest.raises(ValueError, match="'dtype=bf16, batch_size=8' has 1"):
            pairwise(t, method=method)


def failed_sensor_records(seed=0):
    "Simulated records where a sensor failed: energy figures None, a flag saying why."
    recs = simulated_records(simulate_runs(n_reps=6, seed=seed))
    energy = ['energy_j', 'prefill_energy_j', 'decode_energy_j', 'j_per_token', 'j_per_token_pue', 'prefill_j_per_token', 'decode_j_per_token']
    recs[energy] = recs[energy].astype(object)
    lost = recs.index[(recs.dtype == 'bf16') & (recs.batch_size == 32)][:5].tolist() + recs.index[recs.batch_size == 1][:2].tolist()
    for i in lost:
        for c in energy: recs.at[i, c] = None
        recs.at[i, 'flags'] = ['simulated', 'energy-missing: nvml gpu0 returned NaN on every read']
    return recs, lost


def test_runs_without_energy_are_counted_and_left_out(tmp_path):
    recs, lost = failed_sensor_records()
    rep = compare_runs(recs, 'j_per_token', 'dtype,batch_size', figures=False, n_boot=200)
    assert rep.not_computed == {} and rep.header['runs analysed'] == 36 - len(lost) - 1
    assert list(rep.not_analysed) == ['dtype=bf16, batch_size=32'] and 'at least 2 are needed' in rep.not_analysed['dtype=bf16, batch_size=32']
    assert len(rep.configs) == 5 and len(rep.cards) == 5
    assert rep.excluded.missing.sum() == len(lost)
    assert 'nvml gpu0 returned NaN on every read (5)' in rep.excluded.set_index('config').reasons['dtype=bf16, batch_size=32']
    summary = rep.to_dict()['summary'][0]
    assert summary.startswith(f'{len(lost) + 1} of 36 runs left out') and 'dtype=bf16, batch_size=32' in summary
    # through `energytok report` on run records written by the store
    store = RunStore(tmp_path / 'sweep' / 'runs.jsonl')
    for r in recs.to_dict(orient='records'): store.append(r)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert main(['report', str(tmp_path / 'sweep'), '--out', str(tmp_path / 'out'), '--no-figures']) == 0
    assert f'{len(lost) + 1} of 36 runs left out' in buf.getvalue()
    md = (tmp_path / 'out' / 'report.md').read_text()
    assert '## Runs left out' in md and 'nvml gpu0 returned NaN on every read' in md
    data = strict_json((tmp_path / 'out' / 'report.json').read_text())
    assert data['header']['runs left out'] == len(lost) + 1 and data['not_analysed']
    expected = {f'dtype={recs.dtype[i]}, batch_size={recs.batch_size[i]}' for i in lost}
    assert {r['config'] for r in data['left_out']} == expected


def test_several_sweeps_are_reported_alone_or_refused_when_aliased(tmp_path):
    a = simulated_records(simulate_runs({'dtype': {'fp32': 1, 'bf16': 0.8}, 'batch_size': {1: 1, 8: 0.3}}, n_reps=4, seed=1),
                          model='m1', prompt_tokens=64).assign(sweep_id='sweepA')
    b = simulated_records(simulate_runs({'dtype': {'fp32': 1}, 'batch_size': {1: 1, 8: 0.3, 32: 0.2}}, n_reps=4, seed=2),
                          model='m2', prompt_tokens=128).assign(sweep_id='sweepB', run_id=lambda d: 'b' + d.run_id)
    for name, df in (('A', a), ('B', b)):
        store = RunStore(tmp_path / 'res' / name / 'runs.jsonl')
        for r in df.to_dict(orient='records'): store.append(r)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert main(['report', str(tmp_path / 'res'), '--out', str(tmp_path / 'out'), '--no-figures']) == 0
    assert '2 sweeps in' in buf.getvalue() and sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['sweepA', 'sweepB']
    one = strict_json((tmp_path / 'out' / 'sweepB' / 'report.json').read_text())
    assert one['by'] == ['batch_size'] and one['not_computed'] == {}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(['report', str(tmp_path / 'res'), '--out', str(tmp_path / 'pooled'), '--no-figures', '--pool', '--json']) == 0
    pooled = strict_json(buf.getvalue())
    assert 'rank-deficient' in pooled['not_computed']['anova'] and "'prompt_tokens'" in pooled['not_computed']['anova']
    assert pooled['pairwise'] is not None # the configurations themselves are still compared


# ---- the fast paths give the slow paths' results ----

@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), typ=st.sampled_from([2, 3]), blocked=st.booleans(), robust=st.sampled_from(['hc0', 'hc1', 'hc2', 'hc3']))
def test_cell_sum_anova_is_statsmodels_anova_lm(seed, typ, blocked, robust):
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 120))
    d = pd.DataFrame({'a': rng.choice(['x', 'y', 'z'], n), 'b': rng.choice(['p', 'q'], n), 'h': rng.choice(['h1', 'h2', 'h3', 'h4'], n)})
    d['y'] = rng.lognormal(0, 0.2, n) * np.where(d.a == 'y', 1.3, 1.0) * np.where(d.h == 'h2', 1.1, 1.0)
    if d.groupby(['a', 'b']).size().min() < 2 or d.groupby(['a', 'b']).ngroups < 6: return
    res = anova(d, 'y', 'a,b', typ=typ, robust=robust, block='h' if blocked else None).table.set_index('term')
    c = 'Sum' if typ == 3 else 'Treatment'
    f = f'np.log(y) ~ C(a, {c}) * C(b, {c})' + (f' + C(h, {c})' if blocked else '')
    fit = smf.ols(f, d).fit()
    ref, rob = anova_lm(fit, typ=typ), anova_lm(fit, typ=typ, robust=robust)
    names = {'a': f'C(a, {c})', 'b': f'C(b, {c})', 'a:b': f'C(a, {c}):C(b, {c})', 'h': f'C(h, {c})', 'Residual': 'Residual'}
    for term, r in res.iterrows():
        s = ref.loc[names[term]]
        assert math.isclose(r.sum_sq, s.sum_sq, rel_tol=1e-8) and r.df == s.df
        if term != 'Residual':
            assert math.isclose(r.F, s.F, rel_tol=1e-8) and math.isclose(r.p, s['PR(>F)'], rel_tol=1e-6, abs_tol=1e-15)
            assert math.isclose(r[f'F_{robust}'], rob.loc[names[term], 'F'], rel_tol=1e-7)


def test_cell_sum_fit_is_ols():
    rng = np.random.default_rng(4)
    d = pd.DataFrame({'a': rng.choice(list('abcd'), 500), 'h': rng.choice(list('uvw'), 500)})
    d['_y'] = rng.normal(size=500) + (d.a == 'b') * 0.5
    fit = fit_cells(d, model_terms(['a'], False, ['h']))
    X = pd.get_dummies(d[['a', 'h']], drop_first=True, dtype=float).assign(c=1.0)
    beta, ssr, *_ = np.linalg.lstsq(X.to_numpy(), d['_y'].to_numpy(), rcond=None)
    assert math.isclose(fit.ssr, float(ssr[0]), rel_tol=1e-10) and fit.df_resid == 500 - 6
    assert np.allclose(fit.fitted(), X.to_numpy() @ beta)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=80), st.lists(st.floats(0.01, 100), min_size=1, max_size=80))
def test_probability_of_improvement_is_the_rank_statistic(a, b):
    ranks = stats.rankdata(np.concatenate([a, b]))
    u = ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2
    assert math.isclose(prob_better(np.array(a), np.array(b)), 1 - u / (len(a) * len(b)), abs_tol=1e-12)


def test_pairwise_effect_sizes_are_the_per_pair_functions():
    runs = simulate_runs(n_reps=7, seed=5)
    pw = pairwise(runs, 'j_per_token', 'dtype,batch_size', method='tukey')
    g = prepare_runs(runs, 'j_per_token', 'dtype,batch_size').groups()
    for r in pw.table.itertuples():
        assert math.isclose(r.hedges_g, hedges_g(g[r.a], g[r.b])[0], rel_tol=1e-12)
        assert math.isclose(r.prob_a_better, prob_better(g[r.a], g[r.b]), abs_tol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 60), st.floats(0.01, 0.3))
def test_tost_from_summaries_is_statsmodels_ttost(seed, n, margin):
    from statsmodels.stats.weightstats import ttost_ind
    rng = np.random.default_rng(seed)
    ya, yb = rng.normal(0, 0.1, n), rng.normal(0.02, 0.15, n + 3)
    p, (_, p1, _), (_, p2, _) = ttost_ind(ya, yb, -margin, margin, usevar='unequal')
    r = tost(ya.mean(), ya.var(ddof=1), n, yb.mean(), yb.var(ddof=1), n + 3, -margin, margin)
    assert math.isclose(float(r['p_tost']), p, rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(float(r['p_lower']), p1, rel_tol=1e-9, abs_tol=1e-15) and math.isclose(float(r['p_upper']), p2, rel_tol=1e-9, abs_tol=1e-15)


def test_studentized_range_against_scipy_and_the_exact_two_group_case():
    for k in (3, 6, 12, 40):
        for df in (2, 7.5, 40, 300):
            q = np.array([0.5, 2.0, 4.0, 6.0])
            assert np.allclose(studentized_range_sf(q, k, df), stats.studentized_range.sf(q, k, df), rtol=1e-6, atol=1e-12)
    q = np.linspace(0.1, 45, 60)
    for df in (1, 1.47, 3, 7.7, 30, 3_000, 30_000.5, 1e6, np.inf): # Welch df are fractional
        exact = 2 * (stats.t.sf(q / math.sqrt(2), df) if np.isfinite(df) else stats.norm.sf(q / math.sqrt(2)))
        assert np.allclose(studentized_range_sf(q, 2, df), exact, rtol=1e-8, atol=0)
    assert np.allclose(studentized_range_crit(0.95, 5, [4, 20, 200]), stats.studentized_range.ppf(0.95, 5, [4, 20, 200]), rtol=1e-7)


def test_studentized_range_tail_against_a_high_precision_quadrature():
    mp = pytest.importorskip('mpmath')
    mp.mp.dps = 40
    def tail(q, k): # P(range of k normals > q), in the cancellation-free form, to 40 digits
        f = lambda z: mp.npdf(z) * mp.ncdf(z) ** (k - 1) * -mp.expm1((k - 1) * mp.log1p(-mp.ncdf(z - q) / mp.ncdf(z)))
        return k * mp.quad(f, [-mp.inf] + list(np.arange(-10, q / 2 + 10, 0.5)) + [mp.inf])
    for k, q in [(3, 8), (12, 15), (40, 30)]:
        assert math.isclose(studentized_range_sf(float(q), k, np.inf), float(tail(q, k)), rel_tol=1e-9)


def test_large_configurations_use_an_interval_within_the_bootstraps_error():
    # above max_boot_n the IQM interval is Tukey-McLaughlin's; at that size it agrees with the BCa bootstrap to
    # within the bootstrap's own Monte-Carlo error (measured here over 12 bootstrap seeds), on lognormal and on
    # strongly skewed (exponential) runs alike
    rng = np.random.default_rng(8)
    for x in (rng.lognormal(0, 0.08, 1200), rng.exponential(1.0, 1200)):
        boot = np.array([bca_interval(x, n_boot=2000, seed=s) for s in range(12)])
        tm = np.array(trimmed_mean_ci(x))
        mc = boot.std(axis=0, ddof=1)
        assert np.all(np.abs(tm - boot.mean(axis=0)) < 3 * mc), (tm, boot.mean(axis=0), mc)
    runs = simulate_runs({'dtype': {'fp32': 1.0, 'bf16': 0.8}}, n_reps=1500, seed=1)
    d = describe_runs(runs, 'j_per_token', 'dtype').table
    assert set(d.iqm_ci_method) == {'tukey-mclaughlin'}
    assert set(describe_runs(runs, 'j_per_token', 'dtype', max_boot_n=2000).table.iqm_ci_method) == {'bca'}


def test_load_runs_reads_columns_as_a_table_of_records_would(tmp_path):
    recs = simulated_records(simulate_runs(n_reps=3))
    store = RunStore(tmp_path / 'a' / 'runs.jsonl')
    for r in recs.to_dict(orient='records'): store.append(r)
    lines = (tmp_path / 'a' / 'runs.jsonl').read_text().splitlines()
    odd = [json.loads(lines[0]) | {'run_id': 'x1', 'extra': 'e'}, json.loads(lines[1]) | {'run_id': 'x2', 'quality': None, 'more': [1]},
           {k: v for k, v in json.loads(lines[2]).items() if k != 'hostname'} | {'run_id': 'x3'}]
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'runs.jsonl').write_text('\n'.join([lines[3]] + [json.dumps(o) for o in odd] + ['[1]', '{"run_id": "torn", "x": 1.']))
    with pytest.warns(UserWarning, match='2 unreadable line'): got = load_runs(tmp_path)
    rows, seen = [], set()
    for f in sorted(tmp_path.rglob('*.jsonl')):
        for r in read_records(f)[0]:
            if r['run_id'] not in seen: seen.add(r['run_id']); rows.append(r)
    cols = list(RUN_COLUMNS) + list(dict.fromkeys(c for r in rows for c in r if c not in RUN_COLUMNS))
    pd.testing.assert_frame_equal(got, pd.DataFrame(rows, columns=cols))
    assert list(got.columns[-2:]) == ['extra', 'more'] and len(got) == len(recs) + 3
