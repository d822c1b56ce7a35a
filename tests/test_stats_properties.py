"""Properties of the statistics that must hold for any data, and fault injection into the run-table checks."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings, strategies as st, HealthCheck
from scipy import stats

from energytok.stats_anova import anova, check_assumptions, welch_anova
from energytok.stats_compare import compare_two, pairwise, prob_better, studentized_range_crit
from energytok.stats_describe import bca_interval, describe_runs, iqm, iqm_jackknife, prepare_runs, simulate_runs
from energytok.stats_power import equivalence, two_sample_mde, two_sample_power

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
samples = st.lists(st.floats(0.01, 100, allow_nan=False), min_size=2, max_size=60)


def two_groups(a, b):
    return pd.DataFrame({'y': list(a) + list(b), 'g': ['a'] * len(a) + ['b'] * len(b)})


@settings(**SETTINGS)
@given(samples)
def test_iqm_jackknife_matches_brute_force(x):
    fast = np.sort(iqm_jackknife(x))
    brute = np.sort([iqm(np.delete(np.asarray(x), i)) for i in range(len(x))])
    assert np.allclose(fast, brute, rtol=1e-10, atol=1e-10)
    assert math.isclose(iqm(x), stats.trim_mean(x, 0.25), rel_tol=1e-12)


@settings(**SETTINGS)
@given(samples, st.sampled_from([0.25, 0.5, 2.0, 8.0]))
def test_bca_interval_scales_with_the_data(x, c):
    # scaling by a power of two is exact in floating point, so the interval must scale exactly too
    x = np.asarray(x)
    lo, hi = bca_interval(x, n_boot=300, seed=3)
    lo2, hi2 = bca_interval(x * c, n_boot=300, seed=3)
    assert math.isclose(lo2, lo * c, rel_tol=1e-12) and math.isclose(hi2, hi * c, rel_tol=1e-12)


@settings(**SETTINGS)
@given(samples, samples, st.floats(0.1, 10))
def test_log_scale_ratio_scales_and_test_is_unchanged(a, b, c):
    assume(max(np.ptp(np.log(a)), np.ptp(np.log(b))) > 1e-9)  # t is undefined without spread on the log scale
    r1 = compare_two(two_groups(a, b), 'y', 'g', a='a', b='b')
    r2 = compare_two(two_groups(np.multiply(a, c), b), 'y', 'g', a='a', b='b')
    assert math.isclose(r2.ratio, r1.ratio * c, rel_tol=1e-9)
    assert math.isclose(r2.ratio_low, r1.ratio_low * c, rel_tol=1e-9)
    r3 = compare_two(two_groups(np.multiply(a, c), np.multiply(b, c)), 'y', 'g', a='a', b='b')
    assert math.isclose(r3.t, r1.t, rel_tol=1e-7, abs_tol=1e-9) and math.isclose(r3.p, r1.p, rel_tol=1e-7, abs_tol=1e-12)


@settings(**SETTINGS)
@given(samples, samples)
def test_welch_matches_scipy_and_prob_better_is_complementary(a, b):
    if np.ptp(a) == 0 and np.ptp(b) == 0: return
    r = compare_two(two_groups(a, b), 'y', 'g', a='a', b='b', scale='linear')
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert math.isclose(r.t, ref.statistic, rel_tol=1e-9) and math.isclose(r.p, ref.pvalue, rel_tol=1e-7, abs_tol=1e-14)
    assert math.isclose(prob_better(np.array(a), np.array(b)) + prob_better(np.array(b), np.array(a)), 1.0)
    assert 0 <= r.prob_a_better <= 1


@settings(**SETTINGS)
@given(samples, samples)
def test_games_howell_with_two_configurations_is_welch(a, b):
    if np.ptp(a) == 0 or np.ptp(b) == 0: return
    gh = pairwise(two_groups(a, b), 'y', 'g', method='games-howell', scale='linear').table.iloc[0]
    w = compare_two(two_groups(a, b), 'y', 'g', a='b', b='a', scale='linear')
    assert math.isclose(gh.p_adj, w.p, rel_tol=1e-5, abs_tol=1e-9)
    assert math.isclose(gh.ci_low, w.ci_low, rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(gh.ci_high, w.ci_high, rel_tol=1e-5, abs_tol=1e-7)


@settings(**SETTINGS)
@given(samples, samples)
def test_one_way_anova_of_two_configurations_is_student_t_squared(a, b):
    if np.ptp(np.concatenate([a, b])) == 0 or (np.ptp(a) == 0 and np.ptp(b) == 0): return
    f = anova(two_groups(a, b), 'y', 'g', scale='linear').table.iloc[0]
    t = stats.ttest_ind(a, b, equal_var=True)
    assert math.isclose(f.F, t.statistic ** 2, rel_tol=1e-7, abs_tol=1e-9)
    assert math.isclose(f.p, t.pvalue, rel_tol=1e-6, abs_tol=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(3, 6), st.integers(0, 10_000))
def test_adjusted_p_values_are_never_below_unadjusted(k, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'y': rng.lognormal(0, 0.2, k * 6), 'g': np.repeat([f'c{i}' for i in range(k)], 6)})
    for method in ('tukey', 'games-howell', 'holm', 'bh'):
        tab = pairwise(df, 'y', 'g', method=method).table
        assert (tab.p_adj >= tab.p - 1e-12).all(), method
        assert (tab.p_adj <= 1).all() and (tab.ci_low <= tab['diff']).all() and (tab['diff'] <= tab.ci_high).all()
    holm = pairwise(df, 'y', 'g', method='holm').table
    assert (holm.reject == (holm.p_adj < 0.05)).all()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.3), st.integers(3, 40))
def test_tost_equivalence_is_the_interval_inside_the_margin(seed, margin, n):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'y': rng.lognormal(0, 0.1, 2 * n), 'g': ['a'] * n + ['b'] * n})
    e = equivalence(df, 'y', 'g', a='a', b='b', margin=margin)
    inside = e.low < e.ci_low and e.ci_high < e.high
    assert e.equivalent == inside
    assert math.isclose(math.exp(e.high), 1 + margin) and math.isclose(math.exp(e.low), 1 / (1 + margin))
    assert e.verdict in ('different', 'different but within the margin', 'equivalent within the margin', 'inconclusive')


@settings(max_examples=5, deadline=None)
@given(st.lists(st.floats(1.5, 50_000), min_size=8, max_size=12, unique=True), st.integers(2, 12))
def test_interpolated_studentized_range_quantiles(dfs, k):
    approx = studentized_range_crit(0.95, k, dfs)
    idx = [0, len(dfs) // 2, len(dfs) - 1]
    exact = stats.studentized_range.ppf(0.95, k, np.asarray(dfs)[idx])
    assert np.allclose(approx[idx], exact, rtol=1e-4)


def test_mde_inverts_power():
    for n in (3, 8, 40):
        assert math.isclose(two_sample_power(two_sample_mde(n), n), 0.8, rel_tol=1e-6)


def test_simulated_effects_are_recovered():
    runs = simulate_runs({'dtype': {'fp32': 1.0, 'bf16': 0.8}}, n_reps=400, cv=0.08, seed=11)
    r = compare_two(runs, 'j_per_token', 'dtype', a='bf16', b='fp32')
    assert r.ratio_low < 0.8 < r.ratio_high


# ---- fault injection: every bad table is refused with the column or configuration named ----

@pytest.fixture
def runs(): return simulate_runs(n_reps=4, seed=2)


@pytest.mark.parametrize('row', [0, 7, 23])
def test_nan_anywhere_names_the_metric(runs, row):
    bad = runs.copy(); bad.loc[row, 'j_per_token'] = np.nan
    with pytest.raises(ValueError, match=rf'j_per_token: 1 NaN/missing value\(s\), e.g. at rows \[{row}\]'):
        anova(bad, 'j_per_token', 'dtype,batch_size')


def test_missing_factor_value_names_the_factor(runs):
    bad = runs.copy(); bad.loc[3, 'batch_size'] = np.nan
    with pytest.raises(ValueError, match='batch_size: 1 missing value'):
        pairwise(bad, 'j_per_token', ['dtype', 'batch_size'])


@pytest.mark.parametrize('value', [0.0, -0.2])
def test_non_positive_on_log_scale_names_the_metric(runs, value):
    bad = runs.copy(); bad.loc[5, 'j_per_token'] = value
    with pytest.raises(ValueError, match="j_per_token: the log scale needs values > 0"):
        welch_anova(bad, 'j_per_token', 'dtype')
    assert len(prepare_runs(bad, 'j_per_token', 'dtype', scale='linear').data) == len(bad)


def test_single_run_configuration_names_the_configuration(runs):
    one = runs.drop(runs.index[(runs.dtype == 'bf16') & (runs.batch_size == 32)][1:])
    with pytest.raises(ValueError, match=r"'dtype=bf16, batch_size=32' has 1"):
        describe_runs(one, 'j_per_token', 'dtype,batch_size')


def test_missing_and_non_numeric_columns(runs):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['quantization'\]"):
        check_assumptions(runs, 'j_per_token', 'quantization')
    with pytest.raises(TypeError, match="dtype: expected numbers, got 'bf16'|dtype: expected numbers, got 'fp32'"):
        anova(runs, 'dtype', 'batch_size')
    with pytest.raises(ValueError, match="scale: expected one of"):
        anova(runs, 'j_per_token', 'dtype', scale='log10')
    with pytest.raises(TypeError, match='runs: expected a pandas DataFrame'):
        anova(runs.to_dict(), 'j_per_token', 'dtype')


def test_infinite_value_is_refused(runs):
    bad = runs.copy(); bad.loc[1, 'j_per_token'] = np.inf
    with pytest.raises(ValueError, match='j_per_token: 1 infinite value'):
        anova(bad, 'j_per_token', 'dtype')
