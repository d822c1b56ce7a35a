"`energytok bench-serve` end to end: against a real `transformers serve` on this machine, then `energytok report` on its records; against failing endpoints; records, requests and the steady-state window checked."
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
from energytok.serving import load_requests, SteadyState, LoadLevel

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
    "`energytok bench-serve` at two concurrencies against `transformers serve` with the tiny local model; its records and requests."
    out = tmp_path_factory.mktemp('served')
    with TransformersServer(tiny_hf) as srv:
        rc, stdout, stderr = cli('bench-serve', '--url', srv.url, '--concurrency', ','.join(map(str, LEVELS)), '--num-prompts', N,
                                 '--max-tokens', MAX_TOKENS, '--repetitions', 2, '--warmup', 1, '--tokenizer', tiny_hf,
                                 '--out', out, '--quiet')
    assert rc == 0, stderr
    return dict(out=out, url=srv.url, stdout=stdout, runs=load_runs(out), requests=load_requests(out), model=str(tiny_hf))


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
