"Shared fixtures: a small Hugging Face model folder built once per test session (nothing downloaded)."
import pytest

@pytest.fixture(scope='session')
def tiny_hf(tmp_path_factory):
    "A random-initialised two-layer Llama with a byte-level BPE tokenizer, as a local folder (`energytok.harness.tiny_hf_model`)."
    pytest.importorskip('transformers'); pytest.importorskip('tokenizers')
    from energytok.harness import tiny_hf_model
    return tiny_hf_model(tmp_path_factory.mktemp('hf')/'tiny-llama')
