"Hugging Face models in energytok run: the current transformers API without deprecation warnings, EOS as the stop token, padding, q* without a quality figure."
import json, subprocess, sys
import pytest
from energytok.harness import (HFBackend, RunConfig, measure_generation, run_result, hf_stream, add_step, hf_stop_token_ids,
                               left_pad, tiny_hf_model)
from energytok.meter import Meter
from energytok.store import QualityTarget, load_runs

def greedy(backend, prompts, n, stops=()):
    out = [[] for _ in prompts]
    for step in hf_stream(backend.model, prompts, n, stops, 'cpu', backend.pad_token_id): add_step(out, step, stops)
    return out

def test_run_cli_on_a_local_folder_prints_no_deprecation_warning(tiny_hf, tmp_path):
    "`energytok run --model FOLDER` end to end, with deprecation warnings as errors and none printed."
    p = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-W', 'error::FutureWarning', '-c',
                        'import sys; from energytok.cli import main; sys.exit(main(sys.argv[1:]))', 'run',
                        '--model', str(tiny_hf), '--dtype', 'fp32', '--batch-size', '1,2', '--prompt-tokens', '16', '--new-tokens', '8',
                        '--repetitions', '2', '--warmup', '0', '--out', str(tmp_path), '--quiet'],
                       capture_output=True, text=True, timeout=600, env={**__import__('os').environ, 'HF_HUB_OFFLINE': '1'})
    assert p.returncode == 0, p.stderr
    assert 'deprecat' not in (p.stdout + p.stderr).lower(), p.stderr
    runs = load_runs(tmp_path)
    assert len(runs) == 4 and set(runs.model) == {str(tiny_hf)}
    assert (runs.decode_tokens == runs.batch_size * 8).all()  # no stop token: every sequence makes its 8 tokens
    assert (runs.prefill_tokens == runs.batch_size * 16).all()

def test_stop_uses_the_generation_config_eos(tiny_hf, tmp_path):
    "With the model's end-of-sequence id as the stop token, a sequence ends at it (counted), as a reference greedy run says."
    import shutil
    folder = tmp_path/'eos'; shutil.copytree(tiny_hf, folder)
    b = HFBackend(folder)
    prompt = b.prompts(1, 20)
    ref = greedy(b, prompt, 12)[0]
    eos = ref[4]  # make the model's fifth token its end-of-sequence token
    gc = json.loads((folder/'generation_config.json').read_text()); gc['eos_token_id'] = eos
    (folder/'generation_config.json').write_text(json.dumps(gc))
    b2 = HFBackend(folder)
    assert b2.stop_token_ids == hf_stop_token_ids(folder) == (eos,)
    cfg = RunConfig(model=str(folder), batch_size=1, prompt_tokens=20, new_tokens=12, stop_token_ids=b2.stop_token_ids, threads=1)
    with Meter() as m: gen = measure_generation(b2, cfg, m)
    assert gen.tokens[0] == ref[:ref.index(eos) + 1]
    assert gen.decode_tokens == ref.index(eos) + 1 < 12

def test_unequal_prompts_are_padded_exactly(tiny_hf):
    "A batch of prompts of different lengths gives each prompt the tokens it gets alone."
    b = HFBackend(tiny_hf)
    prompts = [b._ids[:3], b._ids[10:41], b._ids[50:57], b._ids[70:71]]
    assert greedy(b, prompts, 9) == [greedy(b, [p], 9)[0] for p in prompts]
    ids, mask, pos = left_pad([[5, 6], [7]], 0)
    assert (ids, mask, pos) == ([[5, 6], [0, 7]], [[1, 1], [0, 1]], [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match='non-empty token lists'): left_pad([[1], []], 0)

def test_no_quality_figure_means_no_good_tokens(tiny_hf):
    "A Hugging Face model has no quality figure: under q* its run does not meet the target, and says why."
    from energytok.metrics import token_metrics
    import pandas as pd
    b = HFBackend(tiny_hf)
    cfg = RunConfig(model=str(tiny_hf), batch_size=1, prompt_tokens=8, new_tokens=4, threads=1)
    with Meter() as m: gen = measure_generation(b, cfg, m)
    res = run_result(gen, cfg, b, q_star=QualityTarget(5.0))
    assert res.quality is None and res.meets_quality is False
    assert any(f.startswith('no-quality-figure') for f in res.flags)
    assert run_result(gen, cfg, b).meets_quality is None  # no target: no verdict
    d = res.to_dict()
    runs = pd.DataFrame([{**d, 'device_name': 'cpu', 'levers': str(d['levers'])}])
    assert token_metrics(runs, by=('model',)).good_fraction.iloc[0] == 0.0
