"`energytok bench-serve` end to end: against a real `transformers serve` on this machine, then `energytok report` on its records; against failing endpoints; records, requests and the steady-state window checked; a task answered with known correct answers, energy per correct answer."
import contextlib, io, json, math, os, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

pytest.importorskip('httpx'); pytest.importorskip('starlette'); pytest.importorskip('uvicorn')
from energytok.cli import main
from energytok.store import load_runs, make_record, RUN_COLUMNS, SERVING_COLUMNS, SCHEMA_VERSION
from energytok.serve_client import (ServerThread, TransformersServer, fake_openai_app, load_prompts, sample_prompts, load_tokenizer,
                                    prompt_token_count, chunk_tokens, Endpoint, public_url)
from energytok.serving import load_requests, SteadyState, LoadLevel, ServeBench, bench_serve, load_levels, level_table
from energytok.quality import builtin_task, load_outputs, quality_report

N, MAX_TOKENS, LEVELS = 8, 8, (1, 2)


def cli(*args):
    "Run `energytok ARGS` in this process; (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(map(str, args)))
    return rc, out.getvalue(), err.getvalue()


def token_times(req):
    "Arrival time of each text chunk of a request, from its level's start, and the tokens each carried."
    t = [req.sent_s + req.ttft_s] if req.ttft_s is not None else []
    for gap in req.itl_s: t.append(t[-1] + gap)
    return t, req.chunk_tokens


@pytest.fixture(scope='module')
def served(tiny_hf, tmp_path_factory):
    "`energytok bench-serve` at two concurrencies against `transformers serve` with the tiny local model, then one level answering the built-in task; their records and requests."
    out, task_out = tmp_path_factory.mktemp('served'), tmp_path_factory.mktemp('served-task')
    with TransformersServer(tiny_hf) as srv:
        rc, stdout, stderr = cli('bench-serve', '--url', srv.url, '--concurrency', ','.join(map(str, LEVELS)), '--num-prompts', N,
                                 '--max-tokens', MAX_TOKENS, '--repetitions', 2, '--warmup', 1, '--tokenizer', tiny_hf,
                                 '--out', out, '--quiet')
        assert rc == 0, stderr
        rc, task_stdout, stderr = cli('bench-serve', '--url', srv.url, '--task', 'builtin', '--concurrency', 1, '--num-prompts', 4,
                                      '--max-tokens', MAX_TOKENS, '--repetitions', 1, '--warmup', 0, '--out', task_out, '--quiet')
        assert rc == 0, stderr
    return dict(out=out, url=srv.url, stdout=stdout, runs=load_runs(out), requests=load_requests(out), model=str(tiny_hf),
                task_out=task_out, task_stdout=task_stdout)


def test_records_of_each_level(served):
    runs = served['runs']
    assert len(runs) == 2 * len(LEVELS) and runs.run_id.is_unique
    assert sorted(runs.concurrency.tolist()) == sorted(2 * list(LEVELS))
    assert runs.request_rate.isna().all() and set(runs.model) == {served['model']}
    assert set(runs.server_url) == {served['url']} and set(runs.schema_version) == {SCHEMA_VERSION}
    assert (runs.n_requests == N).all() and (runs.n_failed == 0).all() and set(runs.token_source) == {'usage'}
    assert (runs.new_tokens == MAX_TOKENS).all()
    for _, r in runs.iterrows():
        assert math.isclose(r.tokens_per_s, r.decode_tokens / r.duration_s, rel_tol=1e-9)
        assert math.isclose(r.j_per_token, r.energy_j / r.decode_tokens, rel_tol=1e-9)
        assert math.isclose(r.j_per_token_pue, r.pue * r.j_per_token, rel_tol=1e-9)
        assert r.energy_provenance and (r.estimated or not r.energy_provenance.startswith('estimate:'))
    # each repetition measured every level once, in a shuffled order
    assert sorted(runs.order_index) == list(range(len(runs)))
    assert all(sorted(g.concurrency) == list(LEVELS) for _, g in runs.groupby('repetition'))
    assert 'c=1' in served['stdout'] and 'c=2' in served['stdout'] and 'steady-state window' in served['stdout']


def test_token_counts_against_the_tokenizer(served, tiny_hf):
    "Prompt tokens are the tokenizer's; output tokens are what greedy generation of the same model makes."
    from energytok.harness import HFBackend, hf_stream, add_step
    reqs = served['requests']
    assert len(reqs) == 2 * len(LEVELS) * N and reqs.ok.all()
    tok = load_tokenizer(tiny_hf)
    by_id = {p.id: p for p in sample_prompts(load_prompts(), N, 0)}
    assert set(reqs.prompt_id) == set(by_id)
    assert reqs.prompt_tokens.tolist() == [prompt_token_count(tok, by_id[i]) for i in reqs.prompt_id]
    b = HFBackend(tiny_hf)
    for pid, n_out in reqs.groupby('prompt_id').output_tokens.unique().items():
        assert len(n_out) == 1  # greedy: the same length at every level and repetition
        out = [[]]
        for step in hf_stream(b.model, [tok(by_id[pid].text)['input_ids']], MAX_TOKENS, b.stop_token_ids, 'cpu', b.pad_token_id):
            add_step(out, step, b.stop_token_ids)
        assert n_out[0] == len(out[0]) <= MAX_TOKENS
    assert (reqs.chunk_tokens.map(sum) == reqs.output_tokens).all()


def test_steady_state_window(served):
    "The window follows the closed-loop rule, and its tokens are those whose chunks arrived inside it."
    runs, reqs = served['runs'], served['requests']
    for _, r in runs.iterrows():
        q = reqs[reqs.run_id == r.run_id].sort_values('index')
        assert len(q) == N and q.timestamp.eq(r.timestamp).all()
        c = int(r.concurrency)
        first = sorted(q.sent_s + q.ttft_s)
        done = sorted(q.sent_s + q.e2e_s)
        assert 0 <= r.steady_start_s < r.steady_end_s
        # opens at the c-th first token and closes at the (N - c)-th completion (edges taken a moment later, in a thread)
        assert first[c - 1] <= r.steady_start_s <= first[c - 1] + 0.5
        assert done[N - c - 1] <= r.steady_end_s <= done[N - c - 1] + 0.5
        assert math.isclose(r.duration_s, r.steady_end_s - r.steady_start_s, rel_tol=1e-6)
        inside = {}
        for _, x in q.iterrows():
            t, k = token_times(x)
            n = sum(kk for tt, kk in zip(t, k) if r.steady_start_s <= tt < r.steady_end_s)
            if n: inside[x['index']] = n
        assert abs(sum(inside.values()) - r.decode_tokens) <= 2  # times rebuilt from rounded-off gaps may move an edge token
        assert abs(len(inside) - r.steady_requests) <= 1 and r.steady_requests <= N
        assert r.decode_tokens <= q.output_tokens.sum()


def test_report_on_served_records(served, tmp_path):
    rc, stdout, stderr = cli('report', served['out'], '--out', tmp_path)
    assert rc == 0, stderr
    rep = json.loads((tmp_path/'report.json').read_text())
    assert rep['by'] == ['concurrency'] and len(rep['configs']) == len(LEVELS)
    lc = [f for f in rep['figures'] if f['name'] == 'load_curve']
    assert len(lc) == 1 and lc[0]['concurrency'] == list(LEVELS) and (tmp_path/'figures'/'load_curve.png').exists()
    assert len(rep['cards']) == len(LEVELS)
    for card in rep['cards']:
        ttft = next(r for r in card['rows'] if r['quantity'] == 'time to first token')
        assert ttft['ci_low'] > 0


def test_failing_endpoint_counts_failures(tmp_path):
    "HTTP 500s and cut streams are counted per level and kept with errors naming the URL; the sweep goes on."
    with ServerThread(fake_openai_app(output_tokens=6, fail_every=3, cut_every=4)) as srv:
        rc, out, err = cli('bench-serve', '--url', srv.url, '--concurrency', '1,2', '--num-prompts', 12, '--max-tokens', 6,
                           '--repetitions', 1, '--warmup', 0, '--out', tmp_path, '--quiet')
    assert rc == 0 and 'requests failed' in err
    runs, reqs = load_runs(tmp_path), load_requests(tmp_path)
    assert len(runs) == 2 and len(reqs) == 24
    failed = reqs[~reqs.ok]
    assert runs.n_failed.sum() == len(failed) > 0
    assert all(srv.url + '/completions' in e for e in failed.error)
    assert any('HTTP 500' in e for e in failed.error) and any('RemoteProtocolError' in e for e in failed.error)
    assert all(any(f.startswith('failed-requests:') for f in fl) for fl in runs['flags'])
    assert (runs.decode_tokens <= reqs[reqs.ok].groupby('run_id').output_tokens.sum().reindex(runs.run_id).to_numpy()).all()


def test_bad_endpoints_fail_fast_with_the_url(tmp_path):
    from energytok.serve_client import free_port
    url = f'http://user:hunter2@127.0.0.1:{free_port()}/v1'
    t0 = time.monotonic()
    rc, _, err = cli('bench-serve', '--url', url, '--concurrency', 1, '--num-prompts', 4, '--out', tmp_path)
    assert rc == 2 and f'cannot reach GET {public_url(url)}/models' in err and 'hunter2' not in err
    assert time.monotonic() - t0 < 30
    with ServerThread(fake_openai_app(model='served-one')) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--model', 'other', '--concurrency', 1, '--num-prompts', 4, '--out', tmp_path)
        assert rc == 2 and "'other' is not served at" in err and 'served-one' in err
    with ServerThread(fake_openai_app(fail_every=1)) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 1, '--num-prompts', 4, '--out', tmp_path)
        assert rc == 2 and 'warm-up request failed' in err and 'HTTP 500' in err
    with ServerThread(fake_openai_app()) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 8, '--num-prompts', 10, '--out', tmp_path)
        assert rc == 2 and 'num_prompts: expected at least 2 x the highest concurrency = 16' in err
    assert not list(tmp_path.rglob('runs.jsonl'))


def test_a_stalled_stream_meets_its_deadline(tmp_path):
    "A server that stops sending mid-stream: each request ends at its deadline as a failure, nothing hangs."
    with ServerThread(fake_openai_app(output_tokens=50, token_delay_s=0.2)) as srv:
        t0 = time.monotonic()
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 2, '--num-prompts', 4, '--max-tokens', 50, '--repetitions', 1,
                         '--warmup', 0, '--timeout-s', 1, '--out', tmp_path, '--quiet')
        assert time.monotonic() - t0 < 30
    assert rc == 2 and 'all 4 requests failed' in err and 'deadline of 1 s' in err
    reqs = load_requests(tmp_path)
    assert reqs.empty  # the level has no record, so its requests are not loaded as a level's
    lines = [json.loads(l) for f in tmp_path.rglob('requests.jsonl') for l in f.read_text().splitlines()]
    assert len(lines) == 4 and not any(l['ok'] for l in lines)


def test_tokens_without_usage(tmp_path, tiny_hf):
    "No usage block: with a local tokenizer the counts are the tokenizer's, without one the chunks', flagged."
    with ServerThread(fake_openai_app(output_tokens=5, usage=False)) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 1, '--num-prompts', 4, '--max-tokens', 5, '--repetitions', 1,
                         '--warmup', 0, '--out', tmp_path/'chunks', '--quiet')
        assert rc == 0, err
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 1, '--num-prompts', 4, '--max-tokens', 5, '--repetitions', 1,
                         '--warmup', 0, '--tokenizer', tiny_hf, '--out', tmp_path/'tok', '--quiet')
        assert rc == 0, err
    a, b = load_requests(tmp_path/'chunks'), load_requests(tmp_path/'tok')
    assert set(a.token_source) == {'chunks'} and (a.output_tokens == 5).all() and a.prompt_tokens.isna().all()
    assert any(f.startswith('tokens-from-chunks') for f in load_runs(tmp_path/'chunks')['flags'].iloc[0])
    tok = load_tokenizer(tiny_hf)
    assert set(b.token_source) == {'tokenizer'}
    assert (b.output_tokens == len(tok.encode(' w0 w1 w2 w3 w4', add_special_tokens=False))).all()


def test_api_key_is_sent_and_never_written(tmp_path):
    with ServerThread(fake_openai_app(api_key='sk-secret-42', token_delay_s=0.002)) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--concurrency', 1, '--num-prompts', 2, '--repetitions', 1, '--out', tmp_path)
        assert rc == 2 and 'HTTP 401' in err  # no key in the environment: refused, and said so
        os.environ['ENERGYTOK_TEST_KEY'] = 'sk-secret-42'
        try: rc, out, err = cli('bench-serve', '--url', srv.url, '--concurrency', 1, '--num-prompts', 6, '--repetitions', 1,
                                '--api-key-env', 'ENERGYTOK_TEST_KEY', '--out', tmp_path, '--quiet')
        finally: del os.environ['ENERGYTOK_TEST_KEY']
    assert rc == 0, err
    assert not any('sk-secret-42' in f.read_text() for f in tmp_path.rglob('*') if f.is_file())
    assert 'sk-secret-42' not in out + err


def test_open_loop_level(tmp_path):
    "A Poisson level: the window opens at the first completion and closes when the last request is sent."
    with ServerThread(fake_openai_app(output_tokens=8, token_delay_s=0.005)) as srv:
        rc, _, err = cli('bench-serve', '--url', srv.url, '--request-rate', 40, '--num-prompts', 30, '--max-tokens', 8, '--repetitions', 1,
                         '--warmup', 0, '--out', tmp_path, '--quiet')
    assert rc == 0, err
    r, q = load_runs(tmp_path).iloc[0], load_requests(tmp_path)
    assert pd.isna(r.concurrency) and r.request_rate == 40.0 and r.n_requests == 30
    first_done, last_sent = (q.sent_s + q.e2e_s).min(), q.sent_s.max()
    if any(f.startswith('no-steady-state') for f in r['flags']): assert last_sent <= first_done + 0.5
    else: assert first_done <= r.steady_start_s <= first_done + 0.5 and last_sent <= r.steady_end_s <= last_sent + 0.5
    assert 0.5 < 29 / q.sent_s.max() / 40 < 2  # 29 gaps at 40/s take about 0.7 s


def test_steady_state_needs_enough_requests():
    with pytest.raises(ValueError, match='at least 2 x concurrency = 8'): SteadyState(LoadLevel(concurrency=4), 7)


def test_schema_1_records_still_load(tmp_path):
    "A record written before the served-run columns existed loads with those columns empty."
    rec = make_record(**{c: None for c in RUN_COLUMNS if c not in SERVING_COLUMNS})
    old = {k: v for k, v in rec.items() if k not in SERVING_COLUMNS}
    old.update(schema_version=1, run_id='old-1', j_per_token=0.5)
    (tmp_path/'runs.jsonl').write_text(json.dumps(old) + '\n')
    df = load_runs(tmp_path)
    assert list(df.columns) == list(RUN_COLUMNS) and df.concurrency.isna().all() and df.j_per_token.iloc[0] == 0.5


def test_card_latency_interval_stays_positive():
    "A skewed TTFT sample (one slow run) gets a log-scale interval, never below 0 s."
    from energytok.card import energy_card
    runs = pd.DataFrame(dict(j_per_token=[0.1, 0.11, 0.12], ttft_s=[0.001, 0.0012, 0.02], tpot_s=[0.01, 0.011, 0.012]))
    rows = energy_card(runs).rows.set_index('quantity')
    assert 0 < rows.loc['time to first token', 'ci_low'] < rows.loc['time to first token', 'value'] < rows.loc['time to first token', 'ci_high']
    from energytok.stats_describe import mean_ci
    assert mean_ci(runs.ttft_s)[1] < 0  # the linear t-interval of the same sample would go below 0


# ---- a task with checkable answers ------------------------------------------------------------------------------------------
def test_real_server_answers_the_builtin_task(served):
    "`--task builtin` against `transformers serve`: every request an attempt, a whole number of correct answers, the text of each in outputs.jsonl."
    runs, reqs, outs = load_runs(served['task_out']), load_requests(served['task_out']), load_outputs(served['task_out'])
    assert len(runs) == 1 and set(runs.task) == {'heldout-verse-completion'} and set(runs.checker) == {'prefix'}
    r = runs.iloc[0]
    assert r.n_attempts == r.n_requests == 4 and float(r.n_correct).is_integer() and 0 <= r.n_correct <= r.n_attempts
    assert r.attempt_energy_j is None or r.attempt_energy_j > 0
    assert reqs.prompt_index.tolist() == [0, 1, 2, 3] and reqs.correct.sum() == r.n_correct
    assert len(outs) == len(reqs) and outs.answer.tolist() == builtin_task().answers[:4]
    assert 'success_rate' in served['task_stdout'] and 'j_per_correct' in served['task_stdout']


def _half_right(task):
    "A reply that answers the even prompts of `task` right (the answer, then more words) and the odd ones wrong."
    right = {p: a for i, (p, a) in enumerate(zip(task.prompts, task.answers)) if i % 2 == 0}
    return lambda prompt: f' {right[prompt]} and more' if prompt in right else ' Verily'


def _watts(power_w=100.0):
    "A meter over a replayed constant power, so a level's energy is power x its duration."
    from energytok.meter import Meter
    from energytok.sensors import ReplaySensor, Trace
    return Meter([ReplaySensor(Trace.from_function(lambda t: power_w, 60.0))], period_s=0.01)


def test_known_correct_answers_give_energy_per_correct_answer(tmp_path):
    "Half the builtin task answered right: n_correct, success rate 0.5, J/correct = the whole level's energy / n_correct."
    n = 16
    with ServerThread(fake_openai_app(reply=_half_right(builtin_task()), token_delay_s=0.003)) as srv:
        bench = ServeBench(Endpoint(srv.url), load_levels('1,2'), repetitions=1, num_prompts=n, max_tokens=8, warmup=0, task='builtin')
        res = bench_serve(bench, tmp_path, meter=_watts(), progress=False)
    runs, reqs = res.runs(), res.requests()
    assert (runs.n_attempts == n).all() and (runs.n_correct == n // 2).all() and reqs.ok.all()
    assert reqs.correct.tolist() == (reqs.prompt_index % 2 == 0).tolist()
    for _, r in runs.iterrows():
        last_done = (reqs.sent_s + reqs.e2e_s)[reqs.run_id == r.run_id].max()
        assert 100 * last_done <= r.attempt_energy_j <= 100 * (last_done + 0.25)  # 100 W over the whole level
        assert r.attempt_energy_j > r.energy_j  # more than the steady state's
    t = level_table(runs).set_index('level')
    assert t.success_rate.tolist() == [0.5, 0.5] and t.correct.tolist() == [n // 2] * 2
    for c in (1, 2):
        r = runs[runs.concurrency == c].iloc[0]
        assert t.loc[f'c={c}', 'j_per_correct'] == pytest.approx(r.attempt_energy_j / r.n_correct, rel=1e-9)
        assert t.loc[f'c={c}', 'j_per_attempt'] == pytest.approx(r.attempt_energy_j / n, rel=1e-9)
    outs = res.outputs()
    assert len(outs) == len(reqs) and outs.tokens.isna().all() and outs.correct.tolist() == reqs.correct.tolist()
    q = quality_report(runs, ['concurrency'], outs)  # the same answers at both levels: paired on all n prompts, nothing differs
    assert q.paired is not None, q.not_computed
    assert len(q.paired) == 1 and q.unit == 'word' and q.divergence.identical.tolist() == [1.0]  # the fake's text does not change with load
    p = q.paired.iloc[0]
    assert (p.shared_prompts, p.only_this_right, p.only_base_right, p.p_mcnemar) == (n, 0, 0, 1.0)


def test_level_table_success_counts_every_run_and_energy_figures_say_how_many_runs_they_rest_on():
    "Three runs at one level, one without energy (a failed sensor): success 12/30 over all, J figures over the two with energy."
    import pandas as pd
    runs = pd.DataFrame(dict(run_id=['a', 'b', 'c'], concurrency=[4] * 3, request_rate=[None] * 3, j_per_token=[0.5, 0.7, None],
                             j_per_token_pue=[0.6, 0.8, None], tokens_per_s=[10.0] * 3, avg_power_w=[100.0, 100.0, None],
                             ttft_s=[0.1] * 3, tpot_s=[0.01] * 3, n_failed=[0] * 3, n_requests=[10] * 3, steady_start_s=[1.0] * 3,
                             steady_end_s=[5.0] * 3, steady_requests=[6] * 3, energy_provenance=['replay', 'replay', 'missing:replay'],
                             n_attempts=[10, 10, 10], n_correct=[5, 3, 4], attempt_energy_j=[40.0, 60.0, None]))
    t = level_table(runs).iloc[0]
    assert (t.attempts, t.correct, t.runs, t.energy_runs) == (30, 12, 3, 2)
    assert t.success_rate == pytest.approx(12 / 30)
    assert t.j_per_attempt == pytest.approx(100.0 / 20) and t.j_per_correct == pytest.approx(100.0 / 8)  # 2 runs: 100 J, 20 attempts, 8 right
    assert not math.isnan(t.j_per_token) and t.j_per_token == pytest.approx(0.6)


def test_failed_requests_are_wrong_attempts(tmp_path):
    "HTTP 500s and cut streams count as attempts, never correct, though a cut stream's partial text (here the right word) is kept."
    task, n = builtin_task(), 20
    with ServerThread(fake_openai_app(reply=lambda p: f' {task.answers[task.prompts.index(p)]} and more', fail_every=5, cut_every=3)) as srv:
        bench = ServeBench(Endpoint(srv.url), load_levels('1'), repetitions=1, num_prompts=n, max_tokens=8, warmup=0, task='builtin')
        res = bench_serve(bench, tmp_path, meter=_watts(), progress=False)
    r, reqs, outs = res.runs().iloc[0], res.requests(), res.outputs()
    assert 0 < r.n_failed < n and r.n_attempts == n and r.n_correct == reqs.ok.sum() == n - r.n_failed
    assert not reqs[~reqs.ok].correct.any()
    cut = outs[outs.prompt_index.isin(reqs[reqs.error.fillna('').str.contains('RemoteProtocolError')].prompt_index)]  # one round: one request a prompt
    assert len(cut) > 0 and (cut.text == ' ' + cut.answer).all() and not cut.correct.any()  # the right word arrived, the request failed
    assert level_table(res.runs()).success_rate.iloc[0] == pytest.approx((n - r.n_failed) / n)


CAPITALS = [({'prompt': 'The capital of France is'}, 'Paris', 'Paris.'),  # normalised: right, exact: wrong
            ({'messages': [{'role': 'user', 'content': 'Capital of Italy?'}]}, 'Rome', 'Rome'),
            ({'prompt': '2+2='}, '4', '4'),
            ({'prompt': 'Largest ocean:'}, 'Pacific', 'Atlantic'),  # wrong
            ({'prompt': 'Opposite of hot'}, 'cold', 'COLD'),  # normalised: right, exact: wrong
            ({'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Say yes'}]}, 'yes', 'yes')]


def test_jsonl_task_through_the_cli(tmp_path):
    "A JSONL task with text and chat prompts: the chat API is chosen, every prompt sent, answers checked as the checker says."
    path = tmp_path/'capitals.jsonl'
    path.write_text('\n'.join(json.dumps({**p, 'answer': a}) for p, a, _ in CAPITALS) + '\n')
    text = lambda p: p['prompt'] if 'prompt' in p else ' '.join(m['content'] for m in p['messages'])
    replies = {text(p): ' ' + r for p, _, r in CAPITALS}
    args = ('--concurrency', 1, '--repetitions', 1, '--warmup', 0, '--quiet', '--task', path)
    with ServerThread(fake_openai_app(reply=lambda prompt: replies[prompt])) as srv:
        rc, out, err = cli('bench-serve', '--url', srv.url, *args, '--out', tmp_path/'norm')
        assert rc == 0, err
        rc, out_exact, err = cli('bench-serve', '--url', srv.url, *args, '--checker', 'exact', '--out', tmp_path/'exact')
        assert rc == 0, err
        rc, _, err = cli('bench-serve', '--url', srv.url, *args, '--no-outputs', '--out', tmp_path/'none')
        assert rc == 0, err
    norm, exact = load_runs(tmp_path/'norm').iloc[0], load_runs(tmp_path/'exact').iloc[0]
    assert norm.levers['api'] == 'chat' and norm.n_requests == norm.n_attempts == len(CAPITALS)  # default: every prompt of a small task
    assert (norm.task, norm.checker, norm.n_correct) == ('capitals', 'normalised', 5)
    assert (exact.checker, exact.n_correct) == ('exact', 3) and exact.sweep_id != norm.sweep_id
    assert 'success_rate' in out and 'j_per_correct' in out and 'checker exact' in out_exact
    reqs = load_requests(tmp_path/'norm')
    assert reqs.correct.tolist() == [True, True, True, False, True, True] and reqs.prompt_index.tolist() == list(range(6))
    lines = (next((tmp_path/'norm').rglob('outputs.jsonl'))).read_text().splitlines()
    assert len(lines) == len(reqs) and [json.loads(l)['answer'] for l in lines] == [a for _, a, _ in CAPITALS]
    assert list((tmp_path/'none').rglob('runs.jsonl')) and not list((tmp_path/'none').rglob('outputs.jsonl'))


@pytest.mark.parametrize('args, named', [(('--task', 'builtin', '--checker', 'fuzzy'), ['--checker', 'exact, normalised, prefix', "'fuzzy'"]),
                                         (('--task', 'no/such/task.jsonl'), ['--task', 'no/such/task.jsonl', "'builtin'"]),
                                         (('--checker', 'exact'), ['--checker', '--task']),
                                         (('--task', 'builtin', '--dataset', 'x.jsonl'), ['--dataset', '--task'])])
def test_bad_task_flags_exit_2_naming_the_flag(tmp_path, args, named):
    "Refused before anything is sent (the URL is never reached): exit 2, one line naming the flag, no traceback."
    rc, out, err = cli('bench-serve', '--url', 'http://127.0.0.1:9/v1', *args, '--out', tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    assert all(s in err for s in named), err
    assert not list(tmp_path.rglob('*.jsonl'))


def test_malformed_task_file_names_the_line(tmp_path):
    path = tmp_path/'bad.jsonl'
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "no answer"}\n')
    rc, _, err = cli('bench-serve', '--url', 'http://127.0.0.1:9/v1', '--task', path, '--out', tmp_path)
    assert rc == 2 and 'line 2' in err and str(path) in err and len(err.strip().splitlines()) == 1, err
