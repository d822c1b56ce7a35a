import warnings
"Run records: property tests of keys and round trips, fault injection (torn lines, fsync), and a killed writer."
import json, math, os, signal, subprocess, sys, textwrap, time
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from energytok.store import (RUN_COLUMNS, SCHEMA_VERSION, RunStore, make_record, run_key, load_runs, read_records,
                             write_json_atomic, QualityTarget, ServiceTarget)


def record(i=0, **kw):
    base = {c: None for c in RUN_COLUMNS}
    base.update(run_id=f's-{i}', sweep_id='s', timestamp='2026-01-01T00:00:00.000+00:00', repetition=i, order_index=i,
                model='m', dtype='fp32', batch_size=1, prompt_tokens=8, new_tokens=8, device='cpu', levers={},
                quantization='none', decode_tokens=8, energy_j=1.5, energy_by_domain_j={'cpu-estimate': 1.5},
                energy_provenance='estimate:codecarbon-cpu-load', estimated=True, flags=[])
    base.update(kw)
    return make_record(**base)


configs = st.dictionaries(st.sampled_from(['model', 'dtype', 'batch_size', 'device', 'levers']),
                          st.one_of(st.integers(0, 64), st.text(max_size=8), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
                          min_size=1)


@given(configs, st.integers(0, 100))
def test_run_key_ignores_key_order_and_separates_repetitions(cfg, rep):
    k = run_key('sw', cfg, rep)
    assert k == run_key('sw', dict(reversed(list(cfg.items()))), rep)
    assert k != run_key('sw', cfg, rep + 1)
    assert k != run_key('sw2', cfg, rep)
    assert k.startswith('sw-')


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(energy=finite, tokens=st.integers(0, 10**9), dom=st.dictionaries(st.sampled_from(['gpu:0', 'gpu:1', 'cpu:0-package']), finite, max_size=3))
def test_round_trip_preserves_values(tmp_path_factory, energy, tokens, dom):
    p = tmp_path_factory.mktemp('rt')/'runs.jsonl'
    RunStore(p).append(record(0, energy_j=energy, decode_tokens=tokens, energy_by_domain_j=dom))
    df = load_runs(p)
    assert list(df.columns) == list(RUN_COLUMNS)
    assert df.energy_j[0] == energy and df.decode_tokens[0] == tokens and df.energy_by_domain_j[0] == dom
    assert df.schema_version[0] == SCHEMA_VERSION


def test_non_finite_values_become_null_with_a_flag(tmp_path):
    r = record(0, avg_power_w=float('inf'), j_per_token=float('nan'))
    assert r['avg_power_w'] is None and r['j_per_token'] is None
    assert sorted(r['flags']) == ['non-finite:avg_power_w', 'non-finite:j_per_token']
    RunStore(tmp_path/'r.jsonl').append(r)
    json.loads((tmp_path/'r.jsonl').read_text())  # strict JSON: no NaN tokens


def test_missing_and_unknown_fields_refused():
    with pytest.raises(ValueError, match=r"missing field\(s\) \['run_id'"): make_record(sweep_id='s')
    full = record(0)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['joules'\]"): make_record(**full, joules=1)


def test_every_append_is_fsynced(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (calls.append(fd), real(fd)))
    s = RunStore(tmp_path/'a'/'runs.jsonl')
    for i in range(3): s.append(record(i))
    assert len(calls) >= 3


@pytest.mark.parametrize('torn', [b'{"run_id": "s-9", "energy', b'{', b'\xff\xfe garbage', b'[1, 2]'])
def test_torn_tail_is_skipped_and_never_corrupts_the_next_record(tmp_path, torn):
    s = RunStore(tmp_path/'runs.jsonl')
    s.append(record(0))
    with open(s.path, 'ab') as f: f.write(torn)
    assert read_records(s.path)[1] == 1  # unreadable until the next append repairs the file
    with pytest.warns(UserWarning, match='torn last line'): s.append(record(1))
    recs, bad = read_records(s.path)
    assert [r['run_id'] for r in recs] == ['s-0', 's-1'] and bad == 0
    assert (tmp_path/'runs.jsonl.torn').read_bytes() == torn + b'\n'  # kept for inspection, out of the records
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(load_runs(s.path)) == 2  # no warning on later loads


def test_load_folder_recursively_dedupes_and_orders_columns(tmp_path):
    RunStore(tmp_path/'a'/'runs.jsonl').append(record(0))
    RunStore(tmp_path/'b'/'c'/'runs.jsonl').append(record(1))
    RunStore(tmp_path/'b'/'runs.jsonl').append(record(0))  # the same run copied elsewhere
    df = load_runs(tmp_path)
    assert sorted(df.run_id) == ['s-0', 's-1']


def test_newer_schema_loads_with_warning_and_extra_columns(tmp_path):
    r = record(0); r['schema_version'] = SCHEMA_VERSION + 1; r['new_field'] = 3
    (tmp_path/'runs.jsonl').write_text(json.dumps(r) + '\n')
    with pytest.warns(UserWarning, match='newer'): df = load_runs(tmp_path/'runs.jsonl')
    assert list(df.columns)[-1] == 'new_field'


def test_empty_and_missing(tmp_path):
    (tmp_path/'runs.jsonl').write_text('')
    assert list(load_runs(tmp_path).columns) == list(RUN_COLUMNS)
    with pytest.raises(FileNotFoundError, match='does not exist'): load_runs(tmp_path/'nope')
    with pytest.raises(ValueError, match='expected a file'): RunStore(tmp_path)


WRITER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import record
    from energytok.store import RunStore
    s = RunStore({path!r})
    i = 0
    while True:
        s.append(record(i, flags=['x' * 20000]))  # large lines: a kill can land inside a write
        i += 1
''')


def test_kill_9_writer_leaves_only_complete_records(tmp_path):
    p = tmp_path/'runs.jsonl'
    code = WRITER.format(tests=os.path.dirname(__file__), path=str(p))
    proc = subprocess.Popen([sys.executable, '-c', code])
    t0 = time.time()
    while (not p.exists() or p.stat().st_size < 400_000) and time.time() - t0 < 60: time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    recs, bad = read_records(p)
    assert len(recs) >= 10 and bad <= 1
    assert [r['repetition'] for r in recs] == list(range(len(recs)))  # nothing lost before the last complete line
    s = RunStore(p)
    s.append(record(10**6))  # appending after a possibly torn tail still gives a readable record
    assert read_records(p)[0][-1]['repetition'] == 10**6


def test_atomic_manifest(tmp_path):
    p = write_json_atomic(tmp_path/'sweep.json', dict(a=(1, 2)))
    assert json.loads(p.read_text()) == dict(a=[1, 2])
    assert [x.name for x in tmp_path.iterdir()] == ['sweep.json']
    with pytest.raises(ValueError): write_json_atomic(tmp_path/'bad.json', dict(x=float('nan')))
    assert [x.name for x in tmp_path.iterdir()] == ['sweep.json']  # no half-written file left behind


@given(finite, finite, st.booleans())
def test_quality_target_is_a_threshold(q, thr, higher):
    t = QualityTarget(thr, higher)
    assert t.check(q) == (q >= thr if higher else q <= thr)


@given(st.floats(1e-4, 10), st.floats(1e-5, 1), st.floats(1e-4, 10), st.floats(1e-5, 1))
def test_service_target_limits(ttft, tpot, max_ttft, max_tpot):
    assert ServiceTarget(max_ttft, max_tpot).check(ttft, tpot) == (ttft <= max_ttft and tpot <= max_tpot)
    assert ServiceTarget(max_ttft_s=max_ttft).check(ttft, tpot) == (ttft <= max_ttft)
