"""Token Production Function: reference data, properties, and the CLI end to end."""
import json, math, subprocess, sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from energytok.production import (FacilitySpec, crossover, evaluate, from_measurement, hardware, sweep, Scenario,
                                  CROSSOVER_VARIABLES)

REFERENCE = Path(__file__).resolve().parents[1].parent / 'shared' / 'reference' / 'mlenergy_llm_v3.csv'


@pytest.fixture(scope='module')
def mlenergy():
    if not REFERENCE.exists(): pytest.skip(f'reference data not present at {REFERENCE}')
    import pandas as pd
    return pd.read_csv(REFERENCE)


def test_llama8b_h100_is_power_bound_at_large_batch(mlenergy):
    rows = mlenergy[(mlenergy.model_id == 'meta-llama/Llama-3.1-8B-Instruct') & (mlenergy.gpu_model == 'H100')
                    & (mlenergy.num_gpus == 1) & (mlenergy.max_num_seqs >= 192)]
    assert len(rows) >= 3
    for _, r in rows.iterrows():
        m = from_measurement(r.output_throughput_tokens_per_sec, r.avg_power_watts, 'H100-SXM',
                             active_params=r.activated_params_billions * 1e9, batch_size=r.avg_batch_size)
        assert m.binding == 'power', r.max_num_seqs
        assert abs(m.power_fraction_of_limit - 1) < 0.03  # within a few percent of the 700 W limit
        assert m.e_tok_j == pytest.approx(r.energy_per_token_joules, rel=1e-6)  # the leaderboard's own definition
        assert 0.9 < m.utilization <= 1.0


def test_every_reference_row_reads_consistently(mlenergy):
    names = {'H100': 'H100-SXM', 'B200': 'B200'}
    for _, r in mlenergy.iterrows():
        m = from_measurement(r.output_throughput_tokens_per_sec, r.avg_power_watts, names[r.gpu_model],
                             active_params=r.activated_params_billions * 1e9, n_devices=int(r.num_gpus))
        assert m.binding in ('compute', 'power')
        assert 0 < m.utilization <= 1.0 + 1e-9  # a measured rate never exceeds its own ceilings
        assert 0 < m.mfu < 1


pos = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(k=pos, c=pos, e=pos, p=pos, pue=st.floats(1.0, 3.0), phi=st.floats(0.01, 1.0), u=st.floats(0.01, 1.0))
def test_rate_is_the_min_ceiling_times_levers(k, c, e, p, pue, phi, u):
    r = evaluate(k * 1e12, c * 1e6, e, FacilitySpec(p * 1e3, pue), phi=phi, utilization=u)
    assert r.token_rate_tok_per_s == pytest.approx(min(r.ceilings.values()) * phi * u)
    assert r.headroom[r.binding] == pytest.approx(1.0)
    assert all(h >= 1.0 - 1e-12 for h in r.headroom.values())


@settings(max_examples=200, deadline=None)
@given(k=pos, c=pos, e=pos, p=pos, pue=st.floats(1.0, 3.0), var=st.sampled_from(['facility_power_w', 'e_tok_j', 'c_tok_flop', 'k_eff_flop_per_s']))
def test_crossover_equalises_compute_and_energy(k, c, e, p, pue, var):
    args = dict(k_eff_flop_per_s=k * 1e12, c_tok_flop=c * 1e6, e_tok_j=e)
    fac = FacilitySpec(p * 1e3, pue)
    x = crossover(var, facility=fac, **args)
    if var == 'facility_power_w': r = evaluate(facility=FacilitySpec(x, pue), **args)
    else: r = evaluate(facility=fac, **{**args, var: x})
    assert r.compute_ceiling_tok_per_s == pytest.approx(r.energy_ceiling_tok_per_s, rel=1e-9)


def test_sweep_is_tidy_and_matches_single_evaluations():
    s = Scenario(1e17, 1.6e10, 0.1, FacilitySpec(1e6, 1.2))
    df = sweep(s, pue=[1.1, 1.5], e_tok_j=[0.05, 0.2])
    assert len(df) == 4
    one = evaluate(1e17, 1.6e10, 0.2, FacilitySpec(1e6, 1.5))
    row = df[(df.pue == 1.5) & (df.e_tok_j == 0.2)].iloc[0]
    assert row.token_rate_tok_per_s == pytest.approx(one.token_rate_tok_per_s)
    assert row.binding == one.binding


@pytest.mark.parametrize('bad, message', [
    (dict(pue=0.99), 'pue'), (dict(facility_power_w=0), 'facility_power_w'),
    (dict(facility_power_w=float('nan')), 'facility_power_w'), (dict(cooling_capacity_w=-1), 'cooling_capacity_w')])
def test_facility_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message): FacilitySpec(**({'facility_power_w': 1e6} | bad))


def _cli(*args):
    exe = Path(sys.executable).with_name('energytok')
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_default_example_and_json():
    res = _cli('tpf', '--json')
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out['binding'] == 'power' and out['hardware'] == 'H100-SXM'
    assert out['e_tok_j'] == pytest.approx(688.298323 / 9805.587745)


def test_cli_spec_file_and_flag_override(tmp_path):
    spec = tmp_path / 'hall.toml'
    spec.write_text('hardware = "H200"\nn_devices = 1000\nactive_params = 8e9\nachievable_fraction = 0.4\n'
                    'e_tok = 0.1\nfacility_power_w = 1e6\npue = 1.25\n')
    res = _cli('tpf', '--spec', str(spec), '--json')
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)['binding'] == 'power'
    res = _cli('tpf', '--spec', str(spec), '--e-tok', '0.01', '--json')
    assert json.loads(res.stdout)['binding'] == 'compute'
    typo = tmp_path / 'typo.toml'
    typo.write_text('active_params = 8e9\ne_tok = 0.1\ngpu_count = 8\njson = true\n')
    res = _cli('tpf', '--spec', str(typo))
    assert res.returncode == 2 and "unknown key(s) ['gpu_count', 'json']" in res.stderr


@pytest.mark.parametrize('args, message', [
    (['--active-params', '8e9', '--e-tok', '0.1', '--facility-power-w', '1e6', '--pue', '0.5'], 'pue'),
    (['--hardware', 'TPU9', '--active-params', '8e9', '--e-tok', '0.1'], 'hardware'),
    (['--active-params', '8e9', '--throughput', '100'], 'throughput, power_w'),
    (['--spec', '/nonexistent/spec.toml'], 'spec'),
])
def test_cli_bad_input_names_the_parameter(args, message):
    res = _cli('tpf', *args)
    assert res.returncode == 2
    assert message in res.stderr


def test_import_is_cheap():
    code = ('import sys, energytok, energytok.production, energytok.cli; '
            'heavy = [m for m in ("torch", "seaborn", "statsmodels", "matplotlib", "scipy", "pandas", "codecarbon", "pynvml") if m in sys.modules]; '
            'print(",".join(heavy))')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == '', f'heavy modules imported at import time: {res.stdout}'
