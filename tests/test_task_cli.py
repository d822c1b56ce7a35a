"`energytok run --task` then `energytok report`, as a user runs them: outputs.jsonl, reference outputs, task columns, resume, report sections, bad input."
import json, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from energytok.store import load_runs, TASK_COLUMNS
from energytok.quality import load_outputs, builtin_task

EXE = str(Path(sys.executable).parent/'energytok')
TASKED = ['--dtype', 'fp32,bf16', '--batch-size', '1,2', '--new-tokens', '8', '--repetitions', '2', '--warmup', '0',
          '--task', 'builtin', '--quiet', '--out', 'res']


def cli(args, cwd, timeout=600):
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def lines(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


@pytest.fixture(scope='module')
def tasked(tmp_path_factory):
    "One tasked sweep of the built-in model, run through the installed command."
    d = tmp_path_factory.mktemp('tasked')
    p = cli(['run', *TASKED], d)
    assert p.returncode == 0, p.stderr
    return d, p


def test_records_and_outputs_of_a_tasked_sweep(tasked):
    d, p = tasked
    folder = next((d/'res').iterdir())
    runs = load_runs(folder)
    assert len(runs) == 2 * 2 * 2
    assert runs[list(TASK_COLUMNS)].notna().all().all()
    assert set(runs['task']) == {'heldout-verse-completion'} and set(runs['checker']) == {'prefix'}
    assert (runs['n_attempts'] == runs['batch_size']).all()  # one attempt per generated sequence
    assert (runs['attempt_energy_j'] == runs['energy_j']).all()
    outs = lines(folder/'outputs.jsonl')
    measured = [o for o in outs if not o['reference']]
    refs = [o for o in outs if o['reference']]
    assert len(measured) == 2 * (1 + 1 + 2 + 2)
    # batch 1 answers prompts 0 and 1 over two repetitions, batch 2 prompts 0..3: the reference covers those 4 once
    assert sorted(o['prompt_index'] for o in refs) == [0, 1, 2, 3]
    assert all(o['dtype'] == 'fp32' and o['batch_size'] == 1 and o['run_id'] is None for o in refs)
    task = builtin_task(64)
    for o in outs:  # every line carries its prompt's answer and a verdict the checker gives again
        assert o['answer'] == task.answers[o['prompt_index']]
        assert o['correct'] == task.score([o['text']], o['prompt_index'])[0]
    for r in runs.itertuples():  # a record's correct count is its outputs' own
        mine = [o for o in measured if o['run_id'] == r.run_id and o['timestamp'] == r.timestamp]
        assert len(mine) == r.n_attempts and sum(o['correct'] for o in mine) == r.n_correct
    assert 'correct %' in p.stdout and 'J/correct' in p.stdout


def test_resume_does_not_duplicate_outputs_or_reference(tasked, tmp_path):
    import shutil
    d, _ = tasked
    shutil.copytree(d/'res', tmp_path/'res')
    folder = next((tmp_path/'res').iterdir())
    before = (folder/'outputs.jsonl').read_text()
    p = cli(['run', *TASKED], tmp_path)
    assert p.returncode == 0, p.stderr
    assert 'resumed: 8 of 8 runs were already on disk' in p.stdout
    assert (folder/'outputs.jsonl').read_text() == before


def test_report_of_a_tasked_sweep(tasked, tmp_path):
    import shutil
    d, _ = tasked
    shutil.copytree(d/'res', tmp_path/'res')
    p = cli(['report', 'res'], tmp_path)
    assert p.returncode == 0, p.stderr
    assert 'Lowest energy per correct answer' in p.stdout
    rep, folder = tmp_path/'res'/'report', next(f for f in (tmp_path/'res').iterdir() if f.name != 'report')
    md = (rep/'report.md').read_text()
    for section in ('## Output divergence from the reference (dtype=fp32, batch_size=1)', '## Batch invariance',
                    '## Energy per correct answer', '## Energy per request and per token'):
        assert section in md, section
    assert (rep/'figures'/'agreement.png').exists()
    doc = json.loads((rep/'report.json').read_text())
    cost = {(c['dtype'], c['batch_size']): c for c in doc['quality']['cost_of_pass']}
    runs = load_runs(tmp_path/'res')
    for (dt, bs), c in cost.items():  # the report's sums are the records'
        mine = runs[(runs.dtype == dt) & (runs.batch_size == bs)]
        assert c['attempts'] == mine.n_attempts.sum() and c['correct'] == mine.n_correct.sum()
        assert c['j_per_attempt'] == pytest.approx(mine.attempt_energy_j.sum() / mine.n_attempts.sum())
    div = {(r['dtype'], r['batch_size']): r for r in doc['quality']['divergence']}
    assert set(div) == {('bf16', 1), ('bf16', 2), ('fp32', 2)} and div[('bf16', 2)]['n_prompts'] == 4
    paired, base = doc['quality']['paired_success'], doc['quality']['paired_base']
    frontier = next(k for k, c in cost.items() if c['frontier'])
    assert (base['dtype'], base['batch_size']) == frontier and len(paired) == 3
    outs = pd.DataFrame(lines(folder/'outputs.jsonl')); outs = outs[~outs.reference]
    firsts = lambda dt, bs: outs[(outs.dtype == dt) & (outs.batch_size == bs)].drop_duplicates('prompt_index').set_index('prompt_index').correct
    for r in paired:  # the paired table is each configuration's first answers against the frontier's, prompt by prompt
        mine, theirs = firsts(r['dtype'], r['batch_size']), firsts(*frontier)
        shared = mine.index.intersection(theirs.index)
        assert r['shared_prompts'] == len(shared) == min(len(mine), len(theirs))
        assert r['only_this_right'] == int((mine[shared] & ~theirs[shared]).sum())
        assert r['only_base_right'] == int((~mine[shared] & theirs[shared]).sum())
    assert '## Success on the same prompts' in md and 'answered different prompts (2 to 4 each)' in md
    cards = {c['config']: {r['quantity'] for r in c['rows']} for c in doc['cards']}
    assert 'energy per correct answer' in cards['dtype=bf16, batch_size=2']
    assert 'outputs identical to the reference' in cards['dtype=bf16, batch_size=2']
    assert 'outputs identical to the reference' not in cards['dtype=fp32, batch_size=1']  # the reference itself
    # another reference, then none
    p = cli(['report', 'res', '--reference', 'dtype=bf16,batch_size=1', '--force'], tmp_path)
    assert p.returncode == 0, p.stderr
    assert '## Output divergence from the reference (dtype=bf16, batch_size=1)' in (rep/'report.md').read_text()
    p = cli(['report', 'res', '--reference', 'none', '--force'], tmp_path)
    assert p.returncode == 0, p.stderr
    md = (rep/'report.md').read_text()
    assert '## Output divergence' not in md and '## Energy per correct answer' in md


@pytest.mark.parametrize('args,msg', [
    (['--checker', 'exact'], "checker: names how a task's answers are checked; give the task too"),
    (['--task', 'no/such/task.jsonl'], "task: 'no/such/task.jsonl' does not exist"),
    (['--reference', 'precision=fp32'], "--reference: expected 'dtype=..., quantization=..., batch_size=...' or 'none'"),
    (['--reference', 'batch_size=one'], "--reference: batch_size must be an integer, got 'one'"),
    (['--task', 'builtin', '--checker', 'fuzzy'], 'checker'),
])
def test_bad_task_flags_fail_before_anything_runs(tmp_path, capsys, args, msg):
    from energytok.cli import main
    assert main(['run', *args, '--out', str(tmp_path/'results')]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'results').exists()


def test_bad_task_file_names_the_line(tmp_path, capsys):
    from energytok.cli import main
    f = tmp_path/'t.jsonl'
    f.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "no answer"}\n')
    assert main(['run', '--task', str(f), '--out', str(tmp_path/'results')]) == 2
    assert f"task: {str(f)!r} line 2: expected an object with 'prompt'" in capsys.readouterr().err


def test_report_bad_reference(tmp_path, capsys):
    from energytok.cli import main
    from energytok.card import simulated_records
    from energytok.store import RunStore
    store = RunStore(tmp_path/'s'/'runs.jsonl')
    for r in simulated_records().to_dict('records'): store.append(r)
    assert main(['report', str(tmp_path/'s'), '--reference', 'fp32']) == 2
    assert "--reference: expected" in capsys.readouterr().err


def test_hf_model_answers_a_ragged_jsonl_task(tiny_hf, tmp_path):
    "A user's JSONL task on a local Hugging Face model: prompts of different token lengths, exact prefill counts, answers checked."
    from energytok.harness import HFBackend
    prompts = ['In the beginning', 'And God said, Let there be light: and there was light. And God saw the light, that it was good',
               'Blessed are the meek: for they shall inherit the', 'Jesus wept']
    answers = ['God', 'and', 'earth', 'xyzzy']
    task = tmp_path/'verses.jsonl'
    task.write_text(''.join(json.dumps(dict(prompt=p, answer=a)) + '\n' for p, a in zip(prompts, answers)))
    p = cli(['run', '--model', str(tiny_hf), '--dtype', 'fp32', '--batch-size', '2', '--repetitions', '2', '--warmup', '0',
             '--new-tokens', '6', '--task', str(task), '--checker', 'exact', '--reference', 'none', '--quiet', '--out', 'res'], tmp_path)
    assert p.returncode == 0, p.stderr
    runs = load_runs(tmp_path/'res').sort_values('timestamp')
    b = HFBackend(tiny_hf)
    lengths = [len(b.encode(x)) for x in prompts]
    assert len(set(lengths)) == 4  # ragged
    assert sorted(runs['prefill_tokens']) == sorted([lengths[0] + lengths[1], lengths[2] + lengths[3]])
    assert set(runs['task']) == {'verses'} and set(runs['checker']) == {'exact'}
    outs = load_outputs(tmp_path/'res')
    assert len(outs) == 4 and not outs['reference'].any()  # --reference none: no reference outputs
    assert sorted(outs['prompt_index']) == [0, 1, 2, 3]
    for o in outs.itertuples():
        assert o.answer == answers[o.prompt_index] and o.correct == (o.text.strip() == answers[o.prompt_index])
