import re
"The harness and sweeps: exact token counts, phase windows, callables, HF-style streams, bad configurations, plans, resume."
import json, math
from types import SimpleNamespace
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from energytok.harness import (RunConfig, BuiltinBackend, CallableBackend, HFBackend, measure_generation, run_result,
                               hf_stream, add_step, truncate_at_stop, latency_stats, text_prompts)
from energytok.workload import Sweep, plan, run_sweep, check_models
from energytok.model import generate, load_builtin, ByteTokenizer
from energytok.meter import Meter
from energytok.sensors import ReplaySensor, Trace
from energytok.store import load_runs, QualityTarget, ServiceTarget
from energytok.quality import load_outputs

torch.set_num_threads(1)
NL = ByteTokenizer().stop_token_id


def replay_meter(power_w=50.0):
    "A meter over a constant-power replayed trace: measured-like energy, no estimate, exact power."
    import numpy as np
    t = np.linspace(0, 3600, 3601)
    tr = Trace(t, np.full_like(t, power_w), meta=dict(source='constant test trace'))
    return Meter([ReplaySensor(tr, domain='gpu:0', update_period_s=1e-3)], period_s=0.01)


@pytest.fixture(scope='module')
def builtin(): return BuiltinBackend()


@pytest.mark.parametrize('bs,new,stop', [(1, 40, False), (3, 40, True), (5, 100, True), (2, 1, False)])
def test_token_counts_exact_against_model_output(builtin, bs, new, stop):
    cfg = RunConfig(batch_size=bs, prompt_tokens=48, new_tokens=new, stop_token_ids=(NL,) if stop else ())
    with replay_meter() as m: gen = measure_generation(builtin, cfg, m)
    ref = generate(builtin.model, builtin.prompts(bs, 48), new, cfg.stop_token_ids)
    assert gen.tokens == ref
    res = run_result(gen, cfg, builtin)
    assert res.decode_tokens == sum(map(len, ref)) and res.prefill_tokens == bs * 48
    assert res.total_tokens == res.prefill_tokens + res.decode_tokens
    assert len(gen.step_s) == max(map(len, ref)) - 1  # one decode step per token after the first
    if stop: assert all(len(r) == new or r[-1] == NL for r in ref)


def test_energy_split_by_phase_with_a_constant_power_trace(builtin):
    cfg = RunConfig(batch_size=2, prompt_tokens=64, new_tokens=40)
    with replay_meter(50.0) as m: gen = measure_generation(builtin, cfg, m)
    res = run_result(gen, cfg, builtin, pue=1.5)
    assert res.energy_provenance == 'replay' and not res.estimated
    assert res.prefill_energy_j == pytest.approx(50.0 * gen.prefill.duration_s, rel=1e-6)
    assert res.decode_energy_j == pytest.approx(50.0 * gen.decode.duration_s, rel=1e-6)
    assert res.energy_j == pytest.approx(res.prefill_energy_j + res.decode_energy_j)
    # the meter's windows and the harness's clock agree on the phase lengths
    assert gen.prefill.duration_s == pytest.approx(gen.prefill_s, abs=5e-3)
    assert gen.decode.duration_s == pytest.approx(gen.decode_s, abs=5e-3)
    assert res.j_per_token == pytest.approx(res.energy_j / 80)
    assert res.j_per_token_pue == pytest.approx(1.5 * res.j_per_token)
    assert res.decode_j_per_token == pytest.approx(res.decode_energy_j / (80 - 2))
    assert res.prefill_j_per_token == pytest.approx(res.prefill_energy_j / 128)
    assert res.tpot_s == pytest.approx(gen.decode_s / 39, rel=0.05)
    assert res.tpot_p50_s <= res.tpot_p90_s <= res.tpot_p99_s
    assert res.avg_power_w == pytest.approx(50.0, rel=1e-3)


def test_targets_decide_meets(builtin):
    cfg = RunConfig(batch_size=1, prompt_tokens=16, new_tokens=8)
    with replay_meter() as m: gen = measure_generation(builtin, cfg, m)
    q = builtin.quality()
    assert run_result(gen, cfg, builtin, q_star=QualityTarget(q + 0.01)).meets_quality is True
    assert run_result(gen, cfg, builtin, q_star=QualityTarget(q - 0.01)).meets_quality is False
    assert run_result(gen, cfg, builtin, s_star=ServiceTarget(max_ttft_s=1e-9)).meets_service is False
    assert run_result(gen, cfg, builtin).meets_quality is None


def test_callable_streaming_and_flat():
    def stream(prompts, n):
        for i in range(n): yield [7 if i == k else 1 for k in range(len(prompts))]  # sequence k stops at step k
    be = CallableBackend(stream, name='s', prompt_fn=lambda b, l: [[0]*l for _ in range(b)])
    cfg = RunConfig(model='s', batch_size=3, new_tokens=10, stop_token_ids=(7,))
    with replay_meter() as m: g = measure_generation(be, cfg, m)
    assert [len(t) for t in g.tokens] == [1, 2, 3] and g.decode_tokens == 6
    assert len(g.step_s) == 2  # the harness stops the stream once every sequence has stopped
    flat = CallableBackend(lambda p, n: [[1, 2, 7, 3, 4] for _ in p], name='f')  # ignores stop tokens itself
    with replay_meter() as m: g2 = measure_generation(flat, RunConfig(model='f', batch_size=2, new_tokens=4, stop_token_ids=(7,)), m)
    assert g2.tokens == [[1, 2, 7], [1, 2, 7]] and g2.flags == ['no-phase-split']
    r = run_result(g2, RunConfig(model='f', batch_size=2, new_tokens=4), flat)
    assert r.prefill_energy_j is None and r.ttft_s is None and r.energy_j > 0


def test_callable_that_generates_nothing_is_refused():
    be = CallableBackend(lambda p, n: [[] for _ in p], name='empty')
    with replay_meter() as m: g = measure_generation(be, RunConfig(model='empty'), m)
    with pytest.raises(ValueError, match='generated 0 tokens'): run_result(g, RunConfig(model='empty'), be)


class HFStyle:
    "A stand-in for a transformers causal LM: called with input_ids/past_key_values, returns logits and the cache."
    def __init__(self, m): self.m, self.calls = m, 0
    def __call__(self, input_ids, past_key_values=None, use_cache=True):
        self.calls += 1
        cache = past_key_values or self.m.new_cache(input_ids.shape[0])
        return SimpleNamespace(logits=self.m(input_ids, cache), past_key_values=cache)


def test_hf_stream_with_a_stand_in_model(builtin):
    pr = builtin.prompts(2, 40)
    fake = HFStyle(builtin.model)
    out = [[], []]
    for step in hf_stream(fake, pr, 50, [NL]): add_step(out, step, [NL])
    assert out == generate(builtin.model, pr, 50, [NL])
    assert fake.calls == max(map(len, out))  # one forward per generated position, cache reused


def test_hf_backend_needs_transformers(tmp_path):
    try:
        import transformers  # noqa: F401
        pytest.skip('transformers is installed')
    except ImportError: pass
    (tmp_path/'config.json').write_text('{}')
    with pytest.raises(ImportError, match='needs the `transformers` package'): HFBackend(tmp_path)


@pytest.mark.parametrize('kw,msg', [
    (dict(dtype='fp8'), 'dtype: expected one of'),
    (dict(dtype='float32'), 'dtype: expected one of'),
    (dict(batch_size=0), 'batch_size: expected a whole number in [1, 65,536], got 0'),
    (dict(batch_size=2.5), 'batch_size: expected a whole number'),
    (dict(new_tokens=-1), 'new_tokens'),
    (dict(dtype='fp16', device='cpu'), "'fp16' is not supported on device 'cpu'"),
    (dict(quantization='int4'), 'quantization: expected one of'),
    (dict(device='cuda:3'), 'not available here'),
])
def test_bad_configs_refused_before_anything_runs(tmp_path, kw, msg):
    calls = []
    def spy(prompts, n):
        calls.append(1); return [[1] * n for _ in prompts]
    factors = {k: ['fp32', v] if k == 'dtype' else [1, v] if k == 'batch_size' else [v] for k, v in kw.items()}
    with pytest.raises((ValueError, TypeError), match=re.escape(msg)):
        run_sweep(Sweep(factors, repetitions=1, base=dict(model='spy'), name='bad'), tmp_path,
                  backends={'spy': CallableBackend(spy, name='spy')}, meter=replay_meter(), progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_unknown_model_and_too_long_refused(tmp_path):
    with pytest.raises(ValueError, match="model: 'nope' is neither"): check_models([RunConfig(model='nope')])
    with pytest.raises(ValueError, match='at most 256'):
        run_sweep(Sweep({'new_tokens': [64, 250]}, repetitions=1), tmp_path, meter=replay_meter(), progress=False)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=30, deadline=None)
@given(levels=st.lists(st.integers(1, 16), min_size=1, max_size=4, unique=True), reps=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_plan_is_a_seeded_randomized_complete_block_design(levels, reps, seed):
    sw = Sweep({'batch_size': levels}, repetitions=reps, seed=seed)
    p = plan(sw)
    assert [r.order_index for r in p] == list(range(len(levels) * reps))
    for rep in range(reps):
        assert sorted(r.config.batch_size for r in p if r.repetition == rep) == sorted(levels)
    assert len({r.run_id for r in p}) == len(p)
    assert [r.run_id for r in plan(Sweep({'batch_size': levels}, repetitions=reps, seed=seed))] == [r.run_id for r in p]


def test_sweep_records_resume_and_refuse_a_different_design(tmp_path):
    sw = Sweep({'dtype': ['fp32', 'bf16'], 'batch_size': [1, 2]}, repetitions=2, base=dict(prompt_tokens=16, new_tokens=12),
               q_star=QualityTarget(3.0), s_star=ServiceTarget(max_ttft_s=10.0), name='t')
    r = run_sweep(sw, tmp_path, meter=replay_meter(), progress=False)
    df = r.runs()
    assert (r.measured, r.skipped, len(df)) == (8, 0, 8)
    assert df.meets_quality.all() and df.meets_service.all()
    assert set(df.energy_provenance) == {'replay'} and not df.estimated.any()
    assert list(df.sort_values('order_index').run_id) == [p.run_id for p in plan(sw)]
    man = json.loads((tmp_path/sw.sweep_id/'sweep.json').read_text())
    assert [o['run_id'] for o in man['order']] == [p.run_id for p in plan(sw)]
    # drop the last three records: the next call measures exactly those
    lines = r.path.read_text().splitlines(keepends=True)
    r.path.write_text(''.join(lines[:5]))
    r2 = run_sweep(sw, tmp_path, meter=replay_meter(), progress=False)
    assert (r2.measured, r2.skipped) == (3, 5)
    df2 = r2.runs()
    assert len(df2) == 8 and df2.run_id.is_unique
    # another design under the same id and folder is refused
    man['spec']['repetitions'] = 99
    (tmp_path/sw.sweep_id/'sweep.json').write_text(json.dumps(man))
    with pytest.raises(ValueError, match='holds a different sweep'): run_sweep(sw, tmp_path, meter=replay_meter(), progress=False)


def test_warmup_runs_are_not_recorded(tmp_path):
    n = []
    def counting(prompts, k):
        n.append(1)
        for i in range(k): yield [1] * len(prompts)
    sw = Sweep({'batch_size': [1, 2]}, repetitions=1, warmup=2, base=dict(model='c', new_tokens=4), name='w', reference=False)
    r = run_sweep(sw, tmp_path/'a', backends={'c': CallableBackend(counting, name='c')}, meter=replay_meter(), progress=False)
    assert len(n) == 2 * 2 + 2 and len(r.runs()) == 2
    # with reference outputs (the default), each distinct prompt is generated once more at batch 1, unmetered and unrecorded
    n.clear()
    sw = Sweep({'batch_size': [1, 2]}, repetitions=1, warmup=2, base=dict(model='c', new_tokens=4), name='w')
    r = run_sweep(sw, tmp_path/'b', backends={'c': CallableBackend(counting, name='c')}, meter=replay_meter(), progress=False)
    refs = load_outputs(r.path.parent).query('reference')
    assert len(refs) == refs.prompt_id.nunique() == 2 and len(n) == 2 * 2 + 2 + len(refs) and len(r.runs()) == 2


def test_text_prompts_and_helpers():
    assert text_prompts(list(range(10)), 3, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    with pytest.raises(ValueError, match='prompt_tokens'): text_prompts([1, 2], 1, 3)
    assert truncate_at_stop([1, 2, 3], [9]) == [1, 2, 3]
    with pytest.raises(ValueError, match='one per sequence'): add_step([[]], [1, 2])
    assert latency_stats([0.1])['tpot_p99_s'] == pytest.approx(0.1)


def test_gpu_shaped_sweep_with_a_stand_in_nvml(tmp_path, monkeypatch):
    "The GPU path without a GPU: CUDA device checks, syncs at the edges, NVML identity, temperatures and energy counter."
    from energytok.nvml import FakeNVML
    from energytok.sensors import available_sensors
    from energytok.metrics import token_metrics
    syncs = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: syncs.append(device))
    fake = FakeNVML([dict(name='NVIDIA H200', power_w=420.0, temp_c=47.0, power_limit_w=700.0)], driver='570.86.15')
    sensors = available_sensors(nvml=fake)
    assert [s.domain for s in sensors] == ['gpu:0']
    def stream(prompts, n):
        for i in range(n): yield [i % 256] * len(prompts)
    be = CallableBackend(stream, name='gpu-lm', device='cuda:0', dtype='fp16')
    sw = Sweep({'batch_size': [1, 4]}, repetitions=2, base=dict(model='gpu-lm', dtype='fp16', device='cuda', new_tokens=16),
               warmup=0, name='gpu')
    r = run_sweep(sw, tmp_path, backends={'gpu-lm': be}, meter=Meter(sensors, period_s=0.01), progress=False)
    df = r.runs()
    assert len(df) == 4 and set(df.device) == {'cuda:0'} and set(df.dtype) == {'fp16'}
    assert set(df.device_name) == {'NVIDIA H200'} and set(df.driver_version) == {'570.86.15'}
    assert set(df.power_limit_w) == {700.0} and set(df.temp_before_c) == {47.0} and set(df.temp_after_c) == {47.0}
    assert set(df.energy_provenance) == {'nvml-energy-counter'} and not df.estimated.any()
    assert len(syncs) >= 4 * 3  # before generation, after prefill, after each decode step
    tm = token_metrics(df, active_params=1e9)
    assert (tm.floor_source == 'datasheet:H200:fp16').all()
    assert list(tm.measured_over_floor) == pytest.approx(list(tm.j_per_token / tm.floor_j_per_token))


def test_summary_table_names_every_varied_factor_and_the_floor(tmp_path):
    from energytok.workload import summary_table
    sw = Sweep({'prompt_tokens': [16, 32]}, repetitions=2, base=dict(new_tokens=8, threads=1), warmup=0, name='st')
    df = run_sweep(sw, tmp_path, meter=replay_meter(), progress=False).runs()
    t = summary_table(df)
    assert sorted(t.prompt_tokens) == [16, 32] and 'new_tokens' not in t and 'device' not in t
    assert 'measured_over_floor' not in t  # a CPU has no datasheet floor
    t2 = summary_table(df.assign(device_name='NVIDIA H200'))
    assert (t2.measured_over_floor > 1).all()


def test_stream_longer_than_the_budget_is_not_asked_for_more():
    pulled = []
    def endless(prompts, n):  # ignores the budget
        while True:
            pulled.append(1); yield [5] * len(prompts)
    be = CallableBackend(endless, name='endless', prompt_fn=lambda b, l: [[0] * l for _ in range(b)])
    with replay_meter() as m: g = measure_generation(be, RunConfig(model='endless', batch_size=2, new_tokens=6), m)
    assert g.decode_tokens == 12 and len(pulled) == 6


def test_prompts_of_the_wrong_length_are_refused():
    be = CallableBackend(lambda p, n: [[1] * n for _ in p], name='c', prompt_fn=lambda b, l: [[0] * (l + 1) for _ in range(b)])
    with replay_meter() as m:
        with pytest.raises(ValueError, match=r'prompts: expected 2 prompts of one length of 1 to 8 tokens \(prompt_tokens\), got lengths \[9, 9\]'):
            measure_generation(be, RunConfig(model='c', batch_size=2, prompt_tokens=8), m)
