"The quality measures on constructed outputs whose answers are known: divergence, batch invariance, checkers and tasks, energy per correct answer, reversals, the report's sentences, and sizes of thousands."
import json, math
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from energytok.quality import (compare_tokens, prompt_id, divergence, batch_invariance, proportion_interval, divergence_summary,
                               agreement_curve, normalise, get_checker, CHECKERS, Task, builtin_task, load_task, resolve_task,
                               task_indices, task_identity, output_rows, load_outputs, OUTPUT_COLUMNS, cost_of_pass, reversals,
                               per_request, quality_report, config_label, paired_success, first_answers, spoken_label)
from energytok.card import simulated_records
from energytok.stats_describe import simulate_runs


REF = list(range(8))


def out(dtype, pid, tokens, batch_size=1, reference=False, run_id='r'):
    return dict(dtype=dtype, batch_size=batch_size, prompt_id=pid, tokens=tokens, reference=reference, run_id=None if reference else run_id)


def test_compare_tokens():
    d = compare_tokens(REF, REF)
    assert (d.first_divergence, d.agreement, d.exact) == (None, 1.0, True)
    d = compare_tokens(REF, [0, 1, 2, 9, 4, 5, 6, 7])
    assert (d.first_divergence, d.agreement, d.exact) == (3, 7 / 8, False)  # positional: tokens after the change can agree again
    d = compare_tokens(REF, REF[:5])  # stopped early: diverges where it stopped
    assert (d.first_divergence, d.agreement, d.exact) == (5, 5 / 8, False)
    assert compare_tokens(REF, REF + [8]).first_divergence == 8
    assert compare_tokens([], []).exact and compare_tokens([], []).agreement == 1.0
    assert compare_tokens([], [1]).agreement == 0.0
    assert prompt_id([1, 2, 3]) == prompt_id(np.array([1, 2, 3])) != prompt_id([1, 2, 4])


def test_divergence_against_known_outputs():
    o = pd.DataFrame([out('fp32', 'p0', [9] * 8, run_id='fp32-run')]  # a measured output of the reference configuration, first
                     + [out('fp32', f'p{i}', REF, reference=True) for i in range(4)]  # the reference outputs are the ones compared with
                     + [out('bf16', f'p{i}', t) for i, t in enumerate([REF, [0, 1, 2, 9, 9, 9, 9, 9], [0, 1, 2, 3, 4, 9, 9, 9], REF])]
                     + [out('bf16', 'p-none', REF)])  # no reference output of its prompt
    d = divergence(o, ['dtype'])
    assert d.attrs['not_compared'] == 1 and d.attrs['reference'] == {'dtype': 'fp32'}
    b = d[d.dtype == 'bf16'].set_index('prompt_id')
    assert b.first_divergence.isna().tolist() == [True, False, False, True]
    assert b.loc['p1', 'first_divergence'] == 3 and b.loc['p2', 'first_divergence'] == 5
    assert b.agreement.tolist() == [1.0, 3 / 8, 5 / 8, 1.0] and b.exact.tolist() == [True, False, False, True]
    assert not (d.dtype == 'fp32').any()  # outputs of the reference configuration are not compared with themselves
    s = divergence_summary(d, ['dtype']).set_index('dtype')
    assert s.loc['bf16', 'identical'] == 0.5 and s.loc['bf16', 'median_first_divergence'] == 4.0
    assert s.loc['bf16', 'mean_agreement'] == pytest.approx((1 + 3 / 8 + 5 / 8 + 1) / 4)
    lo, hi = proportion_confint(2, 4, alpha=0.05, method='wilson')
    assert (s.loc['bf16', 'identical_low'], s.loc['bf16', 'identical_high']) == pytest.approx((lo, hi))
    c = agreement_curve(d[d.dtype == 'bf16'], ['dtype'])
    assert c.identical_through.tolist() == [1, 1, 1, 0.75, 0.75, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match='reference: no output of the configuration'): divergence(o, ['dtype'], {'dtype': 'fp16'})
    with pytest.raises(ValueError, match=r"reference: \['quantization'\] are not columns"): divergence(o, ['dtype'], {'quantization': 'none'})


def test_divergence_is_within_the_other_factors():
    # fp32 at batch 4 is the reference of bf16 at batch 4 only when batch_size is held: within=['batch_size']
    rows = [out('fp32', 'p', REF, 1, reference=True), out('fp32', 'p', REF, 4), out('bf16', 'p', [0] + [9] * 7, 1), out('bf16', 'p', REF, 4)]
    o = pd.DataFrame(rows)
    d = divergence(o, ['dtype', 'batch_size'], {'dtype': 'fp32', 'batch_size': 1})
    assert len(d) == 3 and d.set_index(['dtype', 'batch_size']).loc[('bf16', 4), 'exact']
    w = divergence(o, ['dtype', 'batch_size'], {'dtype': 'fp32'}, within=['batch_size'])
    assert w.set_index(['dtype', 'batch_size']).loc[('bf16', 1), 'first_divergence'] == 1


def test_batch_invariance():
    rows = ([out(dt, f'p{i}', REF, 1) for dt in ('fp32', 'bf16') for i in range(3)]
            + [out('fp32', f'p{i}', REF, 8) for i in range(3)]
            + [out('bf16', 'p0', REF, 8), out('bf16', 'p1', REF[:6] + [0, 0], 8), out('bf16', 'p2', REF, 8)])
    inv = divergence_summary(batch_invariance(pd.DataFrame(rows), ['dtype', 'batch_size']), ['dtype', 'batch_size']).set_index(['dtype', 'batch_size'])
    assert inv.loc[('fp32', 8), 'identical'] == 1.0 and inv.loc[('bf16', 8), 'identical'] == pytest.approx(2 / 3)
    assert inv.loc[('bf16', 8), 'median_first_divergence'] == 6
    with pytest.raises(ValueError, match='by: batch invariance needs batch_size'): batch_invariance(pd.DataFrame(rows), ['dtype'])
    with pytest.raises(ValueError, match='base_batch: no outputs at batch size 2'): batch_invariance(pd.DataFrame(rows), ['dtype', 'batch_size'], 2)


def test_proportion_interval_is_statsmodels_wilson():
    for k, n in [(0, 10), (3, 10), (10, 10), (412, 1000)]:
        assert proportion_interval(k, n, 0.9) == pytest.approx(proportion_confint(k, n, alpha=0.1, method='wilson'))
    assert all(math.isnan(x) for x in proportion_interval(0, 0))
    with pytest.raises(ValueError, match='ci'): proportion_interval(1, 2, 1.5)


def test_checkers_and_tasks(tmp_path):
    assert normalise('  In the Beginning, was... ') == 'in the beginning was'
    assert CHECKERS['exact'](' Word ', 'Word') and not CHECKERS['exact']('word', 'Word')
    assert CHECKERS['normalised']('word!', 'Word') and not CHECKERS['normalised']('word and', 'Word')
    assert CHECKERS['prefix']('Jesus wept.', 'jesus') and not CHECKERS['prefix']('Jesusalem', 'jesus') and not CHECKERS['prefix']('x', '')
    assert get_checker(len) is len
    with pytest.raises(ValueError, match="checker.*'exact'"): get_checker('fuzzy')
    t = Task('t', ['a', 'b', 'c'], ['x', 'y', 'z'], 'exact')
    assert t.score(['x', 'n']) == [True, False] and t.score(['z'], start=2) == [True]
    with pytest.raises(ValueError, match='outputs: 2 outputs from prompt 2 overrun the 3 prompts'): t.score(['z', 'z'], start=2)
    with pytest.raises(ValueError, match='prompts, answers'): Task('t', ['a'], [])
    with pytest.raises(ValueError, match='checker'): Task('t', ['a'], ['x'], 'nope')
    assert Task('t', ['a'], ['X'], lambda o, a: o.lower() == a.lower()).score(['x']) == [True]
    assert task_indices(5, 0, 2) == [0, 1] and task_indices(5, 2, 2) == [4, 0] and task_indices(3, 1, 3) == [0, 1, 2]
    ident = task_identity(t)
    assert ident['n_prompts'] == 3 and ident['checker'] == 'exact' and ident != task_identity(Task('t', ['a', 'b', 'c'], ['x', 'y', 'w'], 'exact'))


def test_builtin_task_is_held_out_verse_completion():
    t = builtin_task()
    assert len(t) > 100 and t.checker == 'prefix'
    assert all(len(p) == 64 for p in t.prompts) and all(a.isalpha() for a in t.answers)
    assert len(builtin_task(16).prompts[0]) == 16
    with pytest.raises(ValueError, match='prompt_tokens'): builtin_task(0)
    assert resolve_task('builtin', checker='exact').checker == 'exact'
    with pytest.raises(TypeError, match='task: expected'): resolve_task(3)


def test_load_task_errors_name_the_file_and_line(tmp_path):
    p = tmp_path/'qa.jsonl'
    p.write_text('{"prompt": "2+2=", "answer": 4}\n\n{"messages": [{"role": "user", "content": "hi"}], "answer": "hello"}\n')
    t = load_task(p)
    assert len(t) == 2 and t.answers == ['4', 'hello'] and t.checker == 'normalised' and t.name == 'qa'
    assert isinstance(t.prompts[1], list)
    with pytest.raises(FileNotFoundError, match='task:.*missing.jsonl'): load_task(tmp_path/'missing.jsonl')
    p.write_text('{"prompt": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(ValueError, match='line 2 is not JSON'): load_task(p)
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="line 1: expected an object with 'prompt'"): load_task(p)
    p.write_text('')
    with pytest.raises(ValueError, match='at least one'): load_task(p)


def test_output_rows_and_load_outputs(tmp_path):
    t = Task('t', ['a', 'b'], ['x', 'y'], 'exact')
    cfg = dict(model='m', dtype='bf16', batch_size=2, prompt_tokens=3, new_tokens=2, device='cpu', world_size=1, quantization='none')
    rows = output_rows('s', 'r1', 't1', cfg, [[1, 2, 3], [4, 5, 6]], [[7, 8], [9, 9]], ['x', 'q'], [1, 0], t)
    assert [r['answer'] for r in rows] == ['y', 'x'] and [r['correct'] for r in rows] == [False, False]
    assert list(rows[0]) == list(OUTPUT_COLUMNS) and rows[0]['prompt_id'] == prompt_id([1, 2, 3])
    d = tmp_path/'sweep'; d.mkdir()
    (d/'runs.jsonl').write_text(json.dumps(dict(run_id='r1', timestamp='t1')) + '\n')
    orphan = output_rows('s', 'r-gone', 't9', cfg, [[1]], [[2]], ['x'])  # a run whose record was never written
    ref = output_rows('s', None, None, cfg, [[1, 2, 3]], [[7, 8]], ['x'], [0], t, reference=True)
    (d/'outputs.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows + orphan + ref) + '{"run_id": "r1", "torn')
    o = load_outputs(d)
    assert len(o) == 3 and o.reference.tolist() == [False, False, True] and list(o.columns) == list(OUTPUT_COLUMNS)
    assert len(load_outputs(tmp_path)) == 3  # a folder holding sweeps
    (d/'outputs.jsonl').write_text('')
    assert load_outputs(d).empty and list(load_outputs(d).columns) == list(OUTPUT_COLUMNS)
    with pytest.raises(FileNotFoundError, match='outputs:.*nowhere'): load_outputs(tmp_path/'nowhere')


def _tasked(energy_a=20.0, energy_b=30.0):
    rows = []
    for cfg, correct, e in [('a', 5, energy_a), ('b', 8, energy_b), ('c', 0, 10.0)]:
        rows += [dict(cfg=cfg, n_attempts=10, n_correct=correct, energy_j=e) for _ in range(2)]
    return pd.DataFrame(rows)


def test_cost_of_pass_known_answers():
    c = cost_of_pass(_tasked(), ['cfg']).set_index('cfg')
    assert c.loc['a', 'success_rate'] == 0.5 and c.loc['a', 'j_per_attempt'] == 2.0 and c.loc['a', 'j_per_correct'] == 4.0
    assert c.loc['b', 'j_per_correct'] == pytest.approx(3.75) and c.loc['c', 'j_per_correct'] == math.inf
    assert c.frontier.tolist() == [False, True, False]
    assert c.pareto.tolist() == [True, True, True]  # each is the cheapest attempt at its success rate or better
    # equal energy per run: the interval is the delta method's for 1/p, exp(+-z sqrt((1-p)/(n p)))
    z, p, n = stats.norm.ppf(0.975), 0.5, 20
    assert (c.loc['a', 'j_per_correct_low'], c.loc['a', 'j_per_correct_high']) == pytest.approx(
        (4 * math.exp(-z * math.sqrt((1 - p) / (n * p))), 4 * math.exp(z * math.sqrt((1 - p) / (n * p)))))
    lo, hi = proportion_confint(0, 20, alpha=0.05, method='wilson')
    assert c.loc['c', 'j_per_correct_low'] == pytest.approx(1.0 / hi) and c.loc['c', 'j_per_correct_high'] == math.inf
    missing = _tasked().assign(energy_j=[20.0, None, 30, 30, 10, 10])  # a failed sensor leaves its run out, never 0 J
    assert cost_of_pass(missing, ['cfg']).set_index('cfg').loc['a', 'attempts'] == 10
    with pytest.raises(ValueError, match='n_correct'): cost_of_pass(_tasked().drop(columns='n_correct'), ['cfg'])


def test_pareto_of_cost_of_pass():
    c = cost_of_pass(_tasked(energy_a=40.0), ['cfg']).set_index('cfg')  # a: 4 J per attempt at 50% is dominated by b
    assert c.pareto.to_dict() == {'a': False, 'b': True, 'c': True}


def test_cost_of_pass_interval_covers():
    # 95% intervals of J per correct answer cover the truth about 95% of the time, energy per run varying
    rng = np.random.default_rng(0)
    p, jpa, hits, trials = 0.4, 2.0, 0, 600
    for _ in range(trials):
        k = rng.binomial(25, p, size=8)
        e = 25 * jpa * rng.lognormal(0, 0.1, size=8) / math.exp(0.005)
        c = cost_of_pass(pd.DataFrame(dict(cfg='x', n_attempts=25, n_correct=k, energy_j=e)), ['cfg']).iloc[0]
        hits += c.j_per_correct_low <= jpa / p <= c.j_per_correct_high
    assert 0.92 <= hits / trials <= 0.975


def test_reversals_and_per_request():
    t = pd.DataFrame(dict(cfg=['short', 'long'], j_per_token=[1.5, 1.0], j_per_request=[15.0, 30.0], tokens_per_request=[10.0, 30.0]))
    r = reversals(t, ['cfg'])
    assert len(r) == 1 and r.iloc[0].cheaper_per_token == 'cfg=long' and r.iloc[0].cheaper_per_request == 'cfg=short'
    assert r.iloc[0].tokens_per_request_ratio == pytest.approx(3.0) and r.iloc[0].j_per_token_ratio == pytest.approx(1 / 1.5)
    assert reversals(t.assign(j_per_request=[15.0, 10.0]), ['cfg']).empty
    runs = pd.DataFrame(dict(energy_j=[100.0, 60.0], decode_tokens=[40, 30], batch_size=[4, 1], world_size=[1, 2], j_per_token=[2.5, 2.0]))
    pr = per_request(runs)
    assert pr.j_per_request.tolist() == [25.0, 30.0] and pr.tokens_per_request.tolist() == [10.0, 15.0]
    served = per_request(runs.assign(j_per_request=[None, 8.0]))
    assert served.j_per_request.tolist() == [25.0, 8.0] and served.tokens_per_request.tolist() == [10.0, 4.0]


def _runs_and_outputs():
    runs = simulated_records(simulate_runs({'dtype': {'fp32': 1.0, 'bf16': 0.8}}, n_reps=4, cv=0.0, seed=2))
    runs = runs.assign(n_attempts=10, n_correct=np.where(runs.dtype == 'bf16', 5, 8), attempt_energy_j=20.0)
    bf = runs.loc[runs.dtype == 'bf16', 'run_id'].iloc[0]
    outs = pd.DataFrame([out('fp32', f'p{i}', REF, reference=True) for i in range(4)]
                        + [out('bf16', f'p{i}', t, run_id=bf) for i, t in enumerate([REF, REF, [0, 1, 2, 9, 9, 9, 9, 9], [0, 1, 2, 3, 4, 9, 9, 9]])])
    return runs, outs


def test_quality_report_sentence_and_tables():
    runs, outs = _runs_and_outputs()
    q = quality_report(runs, ['dtype'], outs)
    assert q.reference['dtype'] == 'fp32' and q.reference_label == 'fp32'
    s = q.sentence('bf16')
    assert s.startswith('bf16 saves 20% J/token, 50% of outputs identical to fp32') and 'first divergence at token 4 median' in s
    assert q.row('divergence', 'bf16')['j_per_token_change'] == pytest.approx(-0.2)
    assert q.row('cost', 'bf16')['j_per_correct'] == pytest.approx(4.0) and q.row('cost', 'fp32')['j_per_correct'] == pytest.approx(2.5)
    assert q.cost.set_index('dtype').frontier.to_dict() == {'bf16': False, 'fp32': True}
    assert q.row('divergence', 'fp16') is None and q.sentence('fp16') is None
    json.dumps(q.to_dict(), allow_nan=False)
    none = quality_report(runs, ['dtype'])
    assert 'divergence' in none.not_computed and none.cost is not None
    assert 'divergence' in quality_report(runs, ['dtype'], outs.drop(columns='dtype')).not_computed
    # an output of a run not among these runs is not compared
    extra = pd.concat([outs, pd.DataFrame([out('bf16', 'p0', [5] * 8, run_id='elsewhere')])], ignore_index=True)
    assert quality_report(runs, ['dtype'], extra).row('divergence', 'bf16')['n_prompts'] == 4


def test_quality_report_at_thousands():
    # 1,000 runs and 2,000 outputs with divergences drawn from a known rule; the summary recovers it exactly
    rng = np.random.default_rng(1)
    runs = simulated_records(simulate_runs({'dtype': {'fp32': 1.0, 'bf16': 0.8, 'fp16': 0.85}, 'batch_size': {1: 1.0, 4: 0.4}},
                                           n_reps=167, seed=3)).head(1000)
    runs = runs.assign(n_attempts=8, n_correct=rng.integers(0, 9, len(runs)), attempt_energy_j=runs.energy_j)
    refs = [dict(dtype='fp32', batch_size=1, prompt_id=f'p{i}', tokens=REF * 4, reference=True, run_id=None) for i in range(400)]
    rows, truth = [], {}
    for j, r in enumerate(runs.itertuples()):
        for i in ((2 * j) % 400, (2 * j + 1) % 400):
            fd = None if r.dtype == 'fp32' or rng.random() < 0.4 else int(rng.integers(0, 32))
            toks = REF * 4 if fd is None else (REF * 4)[:fd] + [99] * (32 - fd)
            rows.append(dict(dtype=r.dtype, batch_size=r.batch_size, prompt_id=f'p{i}', tokens=toks, reference=False, run_id=r.run_id))
            truth.setdefault((r.dtype, r.batch_size), []).append(fd is None)
    outs = pd.DataFrame(refs + rows)
    q = quality_report(runs, ['dtype', 'batch_size'], outs)
    assert len(outs) == 2400 and not q.not_computed.get('divergence')
    got = q.divergence.set_index(['dtype', 'batch_size'])['identical']
    assert ('fp32', 1) not in got.index and len(got) == len(truth) - 1
    for k, v in truth.items():
        if k != ('fp32', 1): assert got[k] == pytest.approx(np.mean(v))
    assert q.cost.attempts.sum() == 8 * 1000 and q.cost.correct.sum() == runs.n_correct.sum()
    assert len(q.sentences) == len(q.divergence) == 5 and q.invariance is not None
    json.dumps(q.to_dict(), allow_nan=False)
    assert config_label(['dtype', 'batch_size'], ('bf16', 4)) == 'dtype=bf16, batch_size=4'


def test_served_outputs_say_why_no_divergence():
    runs, outs = _runs_and_outputs()
    q = quality_report(runs, ['dtype'], outs.assign(tokens=None))  # a server's outputs: text, no token ids
    assert 'token ids' in q.not_computed['divergence'] and q.divergence is None and q.cost is not None


def test_paired_success_is_mcnemar_exact_on_shared_prompts_and_holm_adjusted():
    # 3,000 answers by four configurations over overlapping prompt ranges; every p is the two-sided binomial p of the discordant split
    rng = np.random.default_rng(7)
    ranges = {'base': range(0, 1000), 'a': range(0, 400), 'b': range(200, 900), 'c': range(500, 1400)}
    skill = {'base': 0.6, 'a': 0.6, 'b': 0.5, 'c': 0.7}
    rows = [dict(cfg=k, prompt_index=i, correct=bool(rng.random() < skill[k]), timestamp=f't{j:05d}')
            for j, (k, r) in enumerate((k, i) for k, rr in ranges.items() for i in rr) for i in [r]]
    ans = pd.DataFrame(rows)
    ans = pd.concat([ans, ans.assign(correct=~ans.correct, timestamp=ans.timestamp + 'z')], ignore_index=True)  # later answers: not counted
    ps = paired_success(ans, ['cfg'], {'cfg': 'base'}).set_index('cfg')
    first = first_answers(ans, ['cfg'])
    assert len(first) == sum(len(r) for r in ranges.values())
    base = first[first.cfg == 'base'].set_index('prompt_index').correct
    ps_manual = {}
    for k in ('a', 'b', 'c'):
        x = first[first.cfg == k].set_index('prompt_index').correct
        sh = x.index.intersection(base.index)
        only_x, only_b = int((x[sh] & ~base[sh]).sum()), int((~x[sh] & base[sh]).sum())
        assert ps.loc[k, 'shared_prompts'] == len(sh) == len(set(ranges[k]) & set(ranges['base']))
        assert (ps.loc[k, 'only_this_right'], ps.loc[k, 'only_base_right']) == (only_x, only_b)
        assert ps.loc[k, 'success_difference'] == pytest.approx(x[sh].mean() - base[sh].mean())
        ps_manual[k] = stats.binomtest(min(only_x, only_b), only_x + only_b, 0.5).pvalue
        assert ps.loc[k, 'p_mcnemar'] == pytest.approx(ps_manual[k], rel=1e-9)
    order = sorted(ps_manual, key=ps_manual.get)  # Holm by hand
    holm, run = {}, 0.0
    for i, k in enumerate(order): run = max(run, min(1.0, (3 - i) * ps_manual[k])); holm[k] = run
    for k in holm: assert ps.loc[k, 'p_holm'] == pytest.approx(holm[k], rel=1e-9)
    assert ps.loc['b', 'p_holm'] < 0.05 and ps.loc['b', 'success_difference'] < 0  # 0.5 against 0.6 over 700 prompts


def test_quality_report_compares_answers_with_the_frontier():
    runs, outs = _runs_and_outputs()
    fp = runs.loc[runs.dtype == 'fp32', 'run_id'].iloc[0]
    bf = runs.loc[runs.dtype == 'bf16', 'run_id'].iloc[0]
    answers = pd.DataFrame([dict(dtype='fp32', prompt_index=i, correct=True, reference=False, run_id=fp, tokens=None) for i in range(6)]
                           + [dict(dtype='bf16', prompt_index=i, correct=i < 2, reference=False, run_id=bf, tokens=None) for i in range(3)])
    q = quality_report(runs, ['dtype'], answers)
    assert q.paired_base == {'dtype': 'fp32'}  # the frontier: 2.5 J per correct answer against 4
    r = q.paired.iloc[0]
    assert (r['dtype'], r.prompts, r.base_prompts, r.shared_prompts, r.only_this_right, r.only_base_right) == ('bf16', 3, 6, 3, 0, 1)
    assert r.p_mcnemar == 1.0 and r.success_difference == pytest.approx(-1 / 3)
    json.dumps(q.to_dict(), allow_nan=False)
    assert quality_report(runs, ['dtype'], outs).paired is None  # outputs without verdicts: nothing to pair


def test_served_text_is_compared_word_by_word_against_the_lightest_load():
    # 3 load levels x 40 prompts: at c=8 prompt i's text leaves the c=1 text at word i % 5 for every fourth prompt; c=4 never does;
    # a failed request's partial text is left out
    words = 'In the beginning God created the heaven and the earth'.split()
    runs = pd.DataFrame(dict(run_id=['r1', 'r4', 'r8'], concurrency=[1, 4, 8], request_rate=[None] * 3, j_per_token=[1.0, 0.5, 0.4],
                             energy_j=[100.0, 50.0, 40.0], decode_tokens=[100, 100, 100], batch_size=[1] * 3))
    rows, truth = [], []
    for c in (1, 4, 8):
        for i in range(40):
            w = list(words)
            if c == 8 and i % 4 == 0: w[i % 5] = 'Verily'; truth.append(i % 5)
            rows.append(dict(run_id=f'r{c}', concurrency=c, request_rate=None, reference=False, prompt_id=f'p{i}', prompt_index=i,
                             tokens=None, text=' ' + ' '.join(w), ok=True, correct=None))
    rows.append(dict(run_id='r8', concurrency=8, request_rate=None, reference=False, prompt_id='p1', prompt_index=1, tokens=None,
                     text=' In the', ok=False, correct=None))  # a cut stream
    q = quality_report(runs, ['concurrency'], pd.DataFrame(rows))
    assert q.unit == 'word' and q.reference == {'concurrency': 1} and q.reference_label == 'concurrency=1'
    d = q.divergence.set_index('concurrency')
    assert d.loc[4, 'identical'] == 1.0 and d.loc[8, 'identical'] == pytest.approx(30 / 40) and d.loc[8, 'n_prompts'] == 40
    assert d.loc[8, 'median_first_divergence'] == np.median(truth)
    assert d.loc[8, 'mean_agreement'] == pytest.approx(1 - 10 / 40 / len(words))
    assert q.sentences[1].startswith('concurrency=8 saves 60% J/token, 75% of outputs identical to concurrency=1')
    assert f'first divergence at word {np.median(truth):g} median' in q.sentences[1]
    json.dumps(q.to_dict(), allow_nan=False)
    assert spoken_label(['dtype'], ('bf16',)) == 'bf16' and spoken_label(['batch_size'], (4,)) == 'batch_size=4'
