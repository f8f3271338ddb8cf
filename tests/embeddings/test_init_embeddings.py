"""model.init_embeddings: the right rows get the right (rescaled) vectors, the rest stay as built."""
import pytest
import torch
from tokenizers import Tokenizer, models
from torch import nn

from fastlm.embeddings import WordVectors
from fastlm.embeddings.init import candidate_strings, init_model_embeddings, init_token_embeddings
from fastlm.train.errors import ConfigError

VOCAB = {"<|endoftext|>": 0, "the": 1, "Ġcat": 2, "ĠDog": 3, "Ġzz": 4, "ing": 5, "Ġthe": 6}


def tokenizer():
    return Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<|endoftext|>"))


def test_candidate_strings():
    assert candidate_strings("ĠDog") == ["ĠDog", "Dog", "ġdog", "dog"]
    assert candidate_strings("▁x") == ["▁x", "x"]
    assert candidate_strings("Ġ") == ["Ġ", "ġ"]


def test_rows_copied_by_token_string():
    words = ["cat", "the", "dog", "ing", "unused"]
    vectors = torch.arange(len(words) * 4, dtype=torch.float32).reshape(len(words), 4) + 1
    wv = WordVectors(words, vectors)
    emb = nn.Embedding(len(VOCAB) + 2, 4)  # rows past the tokenizer (special tokens) are left alone
    nn.init.normal_(emb.weight, 0, 0.02)
    before = emb.weight.detach().clone()
    done, rows = init_token_embeddings(emb, tokenizer(), wv)
    # the -> "the"; Ġcat -> "cat"; ĠDog -> "dog" (lowercase fallback); ing -> "ing"; Ġthe -> "the"
    expected = {1: "the", 2: "cat", 3: "dog", 5: "ing", 6: "the"}
    assert (done, rows) == (len(expected), len(VOCAB) + 2)
    scale = before.std() / vectors[[wv.index[w] for w in expected.values()]].std()
    for token_id, word in expected.items():
        torch.testing.assert_close(emb.weight[token_id], wv[word] * scale)
    for token_id in set(range(rows)) - set(expected):
        assert torch.equal(emb.weight[token_id], before[token_id])


def test_width_mismatch_names_both(tmp_path):
    path = WordVectors(["cat"], torch.ones(1, 3)).save(tmp_path / "v.safetensors")
    with pytest.raises(ConfigError, match="dim 3 but the model's token embedding has width 4"):
        init_token_embeddings(nn.Embedding(8, 4), tokenizer(), path)
    with pytest.raises(ConfigError, match="file not found"):
        init_token_embeddings(nn.Embedding(8, 4), tokenizer(), tmp_path / "missing.txt")


def test_gpt_model_and_the_config_key(tmp_path):
    from fastlm.models import GPT, GPTConfig
    from fastlm.train import load_config

    config = load_config("tiny", [f"model.init_embeddings={tmp_path / 'v.txt'}"])
    assert config.model.init_embeddings == str(tmp_path / "v.txt")
    model = GPT(GPTConfig(vocab_size=len(VOCAB), d_model=8, n_layer=1, n_head=2, max_seq_len=8))
    WordVectors(["cat", "zz"], torch.randn(2, 8)).save_word2vec(tmp_path / "v.txt")
    message = init_model_embeddings(model, tokenizer(), tmp_path / "v.txt")
    assert "2 of 7 rows initialised (28.6% coverage)" in message


def test_a_fitted_family_rejects_the_key():
    from fastlm.train import load_config

    with pytest.raises(ConfigError, match='model.family = "ngram" is fitted from counts'):
        load_config("ngram", ["model.init_embeddings=v.txt"])
