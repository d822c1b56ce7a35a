"The built-in model: tokenizer, KV cache against full recomputation, greedy generation with stop tokens, shipped weights."
import json, math
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from energytok.model import (ByteTokenizer, TinyLMConfig, tinylm, generate, generate_stream, load_builtin, builtin_meta,
                             builtin_paths, heldout_ids, evaluate_lm, split_corpus, check_precision, apply_precision)

torch.set_num_threads(1)
SMALL = TinyLMConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)


@given(st.text(max_size=200))
def test_tokenizer_roundtrip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 3), t=st.integers(1, 20), chunks=st.lists(st.integers(1, 6), min_size=1, max_size=5), seed=st.integers(0, 3))
def test_kv_cache_matches_full_forward(b, t, chunks, seed):
    "Logits from any split of the sequence into cached chunks equal those of one full pass."
    m = tinylm(SMALL, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, t), generator=g)
    with torch.no_grad():
        full = m(x)
        cache, parts, i = m.new_cache(b), [], 0
        for c in chunks * 20:
            if i >= t: break
            parts.append(m(x[:, i:i+c], cache)); i += c
    assert cache.length == t
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


def greedy_reference(model, prompt, n, stops):
    "Greedy decoding by recomputing the whole sequence every step (no cache)."
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            out.append(nxt); seq.append(nxt)
            if nxt in stops: break
    return out


@pytest.fixture(scope='module')
def lm(): return load_builtin()


def test_generate_matches_uncached_reference_with_stop_tokens(lm):
    tok = ByteTokenizer()
    held = tok.decode(heldout_ids())
    prompts = [tok.encode(held[i*40:(i+1)*40]) for i in range(3)]
    out = generate(lm, prompts, 60, [tok.stop_token_id])
    for p, o in zip(prompts, out):
        assert o == greedy_reference(lm, p, 60, {tok.stop_token_id})
    assert any(o[-1] == tok.stop_token_id and len(o) < 60 for o in out), 'a verse should end within 60 bytes'


def test_stream_yields_none_after_stop_and_ends_early(lm):
    tok = ByteTokenizer()
    prompts = [tok.encode('And he said unto them, '), tok.encode('Verily I say unto you, ')[:23]]
    steps = list(generate_stream(lm, prompts, 200, [tok.stop_token_id]))
    out = generate(lm, prompts, 200, [tok.stop_token_id])
    assert len(steps) == max(map(len, out)) < 200
    for k, seq in enumerate(out):
        col = [s[k] for s in steps]
        assert col[:len(seq)] == seq and all(c is None for c in col[len(seq):])


def test_generate_rejects_ragged_prompts(lm):
    with pytest.raises(ValueError, match='prompts'): generate(lm, [[1, 2], [3]], 4)
    with pytest.raises(ValueError, match='new_tokens'): generate(lm, [[1, 2]], 0)


def test_too_long_sequence_refused(lm):
    with pytest.raises(ValueError, match='max_seq_len'): generate(lm, [[65]*250], 10)


def test_shipped_weights_are_a_plain_state_dict():
    state = torch.load(builtin_paths()['weights'], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    n = sum(v.numel() for v in state.values())
    assert n == TinyLMConfig(**builtin_meta()['config']).n_params
    assert 0.5e6 <= n <= 3e6
    assert builtin_paths()['weights'].stat().st_size < 8e6


def test_heldout_figures_reproduce_and_beat_unigram(lm):
    meta = builtin_meta()
    ids = heldout_ids()
    ev = evaluate_lm(lm, ids)
    assert ev.loss_nats == pytest.approx(meta['heldout']['fp32']['loss_nats'], abs=1e-3)
    counts = torch.bincount(torch.tensor(ids), minlength=256).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log()).sum())  # entropy of bytes: a model without context does no better
    assert ev.loss_nats < unigram - 1.0


def test_quality_differs_between_precisions():
    ids = heldout_ids()[:4096]
    losses = {(d, q): evaluate_lm(load_builtin(dtype=d, quantization=q), ids).loss_nats
              for d, q in [('fp32', 'none'), ('bf16', 'none'), ('fp32', 'int8-dynamic')]}
    assert len(set(losses.values())) == 3
    assert all(abs(v - losses[('fp32', 'none')]) < 0.1 for v in losses.values())  # close, yet measurably different


def test_heldout_split_matches_corpus():
    from pathlib import Path
    corpus = (Path(__file__).parents[1]/'data'/'kjv-gospels-acts.txt').read_text()
    train, held = split_corpus(corpus)
    assert held == builtin_paths()['heldout'].read_text()
    assert not set(held.splitlines()) - set(corpus.splitlines())
    assert builtin_meta()['corpus']['train_bytes'] == len(train.encode())


@pytest.mark.parametrize('dtype,quant,device,msg', [
    ('fp16', 'none', 'cpu', "'fp16' is not supported on device 'cpu'"),
    ('int4', 'none', 'cpu', 'dtype: expected one of'),
    ('bf16', 'int8-dynamic', 'cpu', "'int8-dynamic' needs"),
    ('fp32', 'int8-dynamic', 'cuda:0', "'int8-dynamic' needs"),
    ('fp32', 'gptq', 'cpu', 'quantization: expected one of'),
])
def test_bad_precision_refused(dtype, quant, device, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(')): check_precision(dtype, quant, device)


def test_apply_precision_dtypes():
    m = apply_precision(tinylm(SMALL), 'bf16')
    assert m.head.weight.dtype == torch.bfloat16
    q = apply_precision(tinylm(SMALL), 'fp32', 'int8-dynamic')
    assert 'Linear' in type(q.head).__name__ and type(q.head) is not torch.nn.Linear


def test_training_recipe_is_deterministic_and_learns():
    from energytok.model import train_tinylm, TrainRecipe
    text = (builtin_paths()['heldout'].read_text() * 2)
    ids = ByteTokenizer().encode(text)
    r = TrainRecipe(steps=30, batch_size=4, seq_len=32, warmup_steps=5, lr=1e-2, threads=1)
    m1, h1 = train_tinylm(ids, SMALL, r, log=None)
    m2, h2 = train_tinylm(ids, SMALL, r, log=None)
    assert h1 == h2
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()): assert torch.equal(a, b), k
    assert sum(l for _, l in h1[-5:]) / 5 < h1[0][1] - 1.0  # from ~ln 256 towards the byte distribution
