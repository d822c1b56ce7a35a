"Token metrics: reference cases (codecarbon's own data file, the production chapter's specs), properties, provenance."
import json, math
from pathlib import Path
import pandas as pd
import pytest
from hypothesis import given, strategies as st
from energytok.metrics import (Figure, per_token, pue_adjusted, energy_floor, hardware_for_device, carbon_intensity,
                               carbon_per_token, cost_per_million_tokens, good_runs, slot_utilization, token_metrics,
                               model_shape, compute_dtype, flops_per_generated_token)
from energytok.store import QualityTarget, ServiceTarget
from energytok.production import hardware, flops_per_token

pos = st.floats(1e-6, 1e6)


@given(pos, st.integers(1, 10**7), st.floats(1.0, 3.0), st.booleans())
def test_pue_scales_and_provenance_is_kept(e, n, pue, est):
    f = per_token(e, n, 'rapl', est)
    g = pue_adjusted(f, pue)
    assert g.value == pytest.approx(f.value * pue) and g.provenance == 'rapl' and g.estimated == est


def test_carbon_intensity_is_codecarbons_offline_figure():
    import codecarbon
    data = json.loads((Path(codecarbon.__file__).parent/'data'/'private_infra'/'global_energy_mix.json').read_text())
    for code in ('FRA', 'USA', 'IND', 'SWE'):
        f = carbon_intensity(code.lower())
        assert f.value == data[code]['carbon_intensity']
        assert f.provenance.startswith(f'codecarbon-offline:global_energy_mix:{code}')


def test_carbon_and_cost_reference_case():
    # 3.6 J/token is 1e-6 kWh/token: at 400 g/kWh that is 4e-4 g/token; a million tokens cost 1 kWh x price
    j = Figure('j_per_token', 3.6, 'J/token', 'nvml-energy-counter', False)
    g = carbon_per_token(j, Figure('carbon_intensity', 400.0, 'gCO2e/kWh', 'x', False))
    assert g.value == pytest.approx(4e-4)
    assert cost_per_million_tokens(j, 0.2).value == pytest.approx(0.2)
    assert cost_per_million_tokens(j, 0.2, pue=1.5).value == pytest.approx(0.3)


def test_estimate_propagates_to_every_derived_figure():
    j = per_token(5.0, 100, 'estimate:codecarbon-cpu-load', True)
    for f in (pue_adjusted(j, 1.2), carbon_per_token(j, carbon_intensity('DEU')), cost_per_million_tokens(j, 0.1)):
        assert f.estimated and 'estimate:codecarbon-cpu-load' in f.provenance
        assert 'ESTIMATED' in repr(f)


def test_floor_uses_the_production_specs():
    for name, dtype in [('H100-SXM', 'bf16'), ('A100-SXM', 'fp32'), ('L4', 'int8')]:
        spec = hardware(name)
        f = energy_floor(2e9, spec, dtype)
        assert f.value == pytest.approx(2e9 * spec.joules_per_flop(dtype))
        assert f.provenance == f'datasheet:{name}:{dtype}'


@pytest.mark.parametrize('name,key', [('NVIDIA H100 80GB HBM3', 'H100-SXM'), ('NVIDIA H200', 'H200'),
                                      ('NVIDIA A100-SXM4-80GB', 'A100-SXM'), ('NVIDIA B200', 'B200'), ('NVIDIA L4', 'L4'),
                                      ('NVIDIA H100 PCIe', None), ('NVIDIA H100 NVL', None), ('NVIDIA A100-PCIE-40GB', None),
                                      ('NVIDIA L40S', None), ('AMD EPYC 7B13', None), (None, None)])
def test_device_names(name, key):
    spec = hardware_for_device(name)
    assert (spec.name if spec else None) == key


def runs_table(n=4, **kw):
    rows = []
    for i in range(n):
        r = dict(model='m', dtype='bf16', quantization='none', batch_size=4, prompt_tokens=32, new_tokens=32, device='cuda:0',
                 energy_j=10.0 + i, decode_tokens=128, j_per_token=(10.0 + i)/128, prefill_j_per_token=0.01,
                 decode_j_per_token=0.08, tokens_per_s=1000.0, energy_provenance='nvml-energy-counter', estimated=False,
                 pue=1.1, device_name='NVIDIA H200', quality=1.3, ttft_s=0.01, tpot_p90_s=0.002, meets_quality=None,
                 meets_service=None)
        r.update({k: (v[i] if isinstance(v, list) else v) for k, v in kw.items()})
        rows.append(r)
    return pd.DataFrame(rows)


def test_good_tokens_by_hand():
    runs = runs_table(quality=[1.2, 1.4, 1.6, 1.3], ttft_s=[0.01, 0.01, 0.01, 0.5])
    good = good_runs(runs, QualityTarget(1.5), ServiceTarget(max_ttft_s=0.1))
    assert list(good) == [True, True, False, False]
    tm = token_metrics(runs, q_star=QualityTarget(1.5), s_star=ServiceTarget(max_ttft_s=0.1), active_params=1e9)
    assert tm.j_per_good_token[0] == pytest.approx(sum(10.0 + i for i in range(4)) / (2 * 128))
    assert tm.good_fraction[0] == 0.5


def test_recorded_verdicts_used_when_no_target_given():
    runs = runs_table(meets_quality=[True, False, None, True], meets_service=[True, True, True, False])
    assert list(good_runs(runs)) == [True, False, True, False]


def test_no_good_tokens_gives_nan_not_a_number():
    tm = token_metrics(runs_table(quality=[9.0]*4), q_star=QualityTarget(1.0), active_params=1e9)
    assert math.isnan(tm.j_per_good_token[0]) and tm.good_fraction[0] == 0


def test_utilization_and_adjusted_output():
    runs = runs_table(decode_tokens=[128, 64, 128, 32])
    u = slot_utilization(runs)
    assert list(u) == [1.0, 0.5, 1.0, 0.25]
    tm = token_metrics(runs, active_params=1e9)
    assert tm.utilization[0] == pytest.approx(u.mean())
    assert tm.utilization_adjusted_tokens_per_s[0] == pytest.approx((1000 * u).mean())
    assert token_metrics(runs, utilization=0.8, active_params=1e9).utilization_adjusted_tokens_per_s[0] == pytest.approx(800)
    with pytest.raises(ValueError, match='utilization'): token_metrics(runs, utilization=1.5)


def test_table_floor_ratio_and_pue():
    runs = runs_table()
    tm = token_metrics(runs, active_params=1e9, country='FRA', usd_per_kwh=0.1)
    # per run 4 x 32 prompt tokens and 128 generated; no layer shape, so no attention term
    floor = flops_per_token(1e9) * (4 * 32 + 128) / 128 * hardware('H200').joules_per_flop('bf16')
    assert tm.floor_j_per_token[0] == pytest.approx(floor)
    assert tm.measured_over_floor[0] == pytest.approx(tm.j_per_token[0] / floor)
    assert tm.j_per_token_pue[0] == pytest.approx(1.1 * tm.j_per_token[0])
    assert tm.usd_per_mtok[0] == pytest.approx(tm.j_per_token_pue[0] * 1e6 / 3.6e6 * 0.1)
    assert tm.g_co2e_per_token[0] == pytest.approx(tm.j_per_token_pue[0] / 3.6e6 * carbon_intensity('FRA').value)
    assert token_metrics(runs, pue=1.5, active_params=1e9).j_per_token_pue[0] == pytest.approx(1.5 * tm.j_per_token[0])


def test_builtin_model_floor_uses_its_shape():
    from energytok.model import TinyLMConfig, builtin_meta
    c = TinyLMConfig(**builtin_meta()['config'])
    tm = token_metrics(runs_table(model='tinylm-kjv', dtype='fp32'))
    # 4 sequences x 32 prompt tokens (context 16 on average), 128 generated tokens (context 32 + 16)
    f_pre = flops_per_token(c.n_block_params, 16, c.n_layers, c.d_model)
    f_gen = flops_per_token(c.n_block_params, 32 + 16, c.n_layers, c.d_model)
    f = (4 * 32 * f_pre + 128 * f_gen) / 128
    assert tm.floor_j_per_token[0] == pytest.approx(f * hardware('H200').joules_per_flop('fp32'))
    assert model_shape('tinylm-kjv') == (c.n_block_params, c.n_layers, c.d_model)


@given(st.floats(1e6, 1e11), st.integers(0, 4096), st.integers(1, 4096), st.integers(1, 64), st.integers(1, 64))
def test_floor_flops_grow_with_the_prompt(params, prompt, gen, prompt_len, new_len):
    f = flops_per_generated_token(params, prompt, gen, prompt_len, new_len, 4, 128)
    assert f >= flops_per_token(params)  # never below the bare per-token cost
    assert flops_per_generated_token(params, prompt + 1, gen, prompt_len, new_len, 4, 128) > f
    assert flops_per_generated_token(params, prompt, gen) == pytest.approx(flops_per_token(params) * (prompt + gen) / gen)


def test_int8_dynamic_floor_uses_the_int8_peak():
    runs = runs_table(quantization='int8-dynamic', dtype='fp32', device_name='NVIDIA L4')
    tm = token_metrics(runs, active_params=1e9)
    assert tm.floor_source[0] == 'datasheet:L4:int8' and compute_dtype('fp32', 'int8-dynamic') == 'int8'


def test_mixed_provenance_and_estimate_flag_per_group():
    runs = runs_table(energy_provenance=['nvml-energy-counter', 'nvml-energy-counter', 'nvml-power', 'nvml-energy-counter'],
                      estimated=[False, False, False, True])
    tm = token_metrics(runs, active_params=1e9)
    assert tm.energy_provenance[0] == 'nvml-energy-counter+nvml-power'
    assert bool(tm.estimated[0])


def test_cpu_has_no_floor():
    tm = token_metrics(runs_table(device='cpu', device_name='AMD EPYC'), active_params=1e9)
    assert tm.floor_j_per_token.isna().all() and tm.floor_source[0] == 'no datasheet for this device'


def test_bad_inputs():
    runs = runs_table()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['tokens_per_s'\]"): token_metrics(runs.drop(columns='tokens_per_s'))
    with pytest.raises(ValueError, match='empty'): token_metrics(runs.iloc[:0])
    with pytest.raises(ValueError, match='country'): token_metrics(runs, country='XX')
    with pytest.raises(ValueError, match='usd_per_kwh'): token_metrics(runs, usd_per_kwh=0)
    with pytest.raises(ValueError, match='tokens'): per_token(1.0, 0, 'rapl', False)
    with pytest.raises(ValueError, match='energy_j'): per_token(-1.0, 3, 'rapl', False)
