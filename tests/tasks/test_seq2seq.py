"""Generation and translation on a decoder: prompt masking, loss falls, decoding (greedy, beam)."""
import itertools
import json
import random

import pytest
import torch

from fastlm.models import GPT, GPTConfig
from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.decoding import beam_search, greedy, sequence_log_prob
from fastlm.tasks.loop import evaluate_run, finetune
from tests.tasks.task_helpers import tiny_config, write_jsonl

LEXICON = dict(zip("red blue green cat dog bird one two three".split(),
                   "rot blau gruen katze hund vogel eins zwei drei".split()))


def _pairs(n, seed, src="source", tgt="target"):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(sorted(LEXICON), rng.randint(1, 3))
        out.append({src: " ".join(words), tgt: " ".join(LEXICON[w] for w in words)})
    return out


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _config(task, train, val, **keys):
    raw = tiny_config(train, val, steps=40, lr=1e-2)
    raw["model"]["d_model"] = 48
    raw["task"].update({"max_new_tokens": 8, "eval_examples": 6, **keys})
    return task_config_from_dict(raw, task.Section)


def test_translation_learns_and_scores(tmp_path):
    task = get_task("translation")
    train = write_jsonl(tmp_path / "t.jsonl", _pairs(200, 0))
    val = write_jsonl(tmp_path / "v.jsonl", _pairs(20, 1))
    result = finetune(task, _config(task, train, val, beam_size=2), tmp_path / "run", show_progress=False)
    losses = _losses(tmp_path / "run")
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    m = result["metrics"]
    assert {"bleu", "chrf", "perplexity"} <= set(m) and m["decoding"] == "beam 2"
    assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"])
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all(set(p) == {"source", "reference", "prediction"} for p in preds)
    assert evaluate_run(task, tmp_path / "run")["metrics"]["bleu"] == pytest.approx(m["bleu"])


def test_aligned_text_files(tmp_path):
    task = get_task("translation")
    pairs = _pairs(30, 0)
    (tmp_path / "s.txt").write_text("".join(p["source"] + "\n" for p in pairs))
    (tmp_path / "t.txt").write_text("".join(p["target"] + "\n" for p in pairs))
    tc = _config(task, f"{tmp_path / 's.txt'}|{tmp_path / 't.txt'}", None, eval_examples=2)
    tc.config.train.steps = 2
    assert finetune(task, tc, tmp_path / "run", show_progress=False)["metrics"]["examples"] == 2
    (tmp_path / "t.txt").write_text("".join(p["target"] + "\n" for p in pairs[:-1]))
    with pytest.raises(DatasetError, match="has 30 lines but .*t.txt has 29"):
        finetune(task, tc, tmp_path / "run2", show_progress=False)


def test_generation_masks_the_prompt_and_reports_rouge(tmp_path):
    task = get_task("generation")
    train = write_jsonl(tmp_path / "t.jsonl", _pairs(200, 0, "prompt", "response"))
    val = write_jsonl(tmp_path / "v.jsonl", _pairs(20, 1, "prompt", "response"))
    tc = _config(task, train, val)
    result = finetune(task, tc, tmp_path / "run", show_progress=False)
    assert {"rouge1", "rouge2", "rougeL", "perplexity"} <= set(result["metrics"])
    losses = _losses(tmp_path / "run")
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    # The loss counts the response tokens (and the end token) only.
    from fastlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    examples = task.encode(tc, [{"source": "red cat", "target": "rot katze"}], tok, {})
    batch = task.collate(examples)
    n_prompt, n_target = len(examples[0]["prompt"]), len(examples[0]["target"])
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert batch["labels"][0, n_prompt:].tolist() == examples[0]["target"]
    out = result["model"].cpu()(batch)
    assert int(out["tokens"]) == n_target
    with pytest.raises(DatasetError, match=r"v2\.jsonl:1: missing field 'response'"):
        (tmp_path / "v2.jsonl").write_text('{"prompt": "x"}\n')
        finetune(task, _config(task, train, str(tmp_path / "v2.jsonl")), tmp_path / "r2", show_progress=False)


# ---------------------------------------------------------------- decoding

def _tiny_lm(seed=0, vocab=6):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(family="llama", vocab_size=vocab, n_layer=1, n_head=2, n_kv_head=2, d_model=16,
                          max_seq_len=16, init_std=0.5)).double().eval()
    return model


def test_beam_of_one_is_greedy():
    model = _tiny_lm()
    for prompt in ([1, 2], [3], [4, 4, 5]):
        assert beam_search(model, prompt, 1, 6, eos_id=0, length_penalty=0.0) == greedy(model, prompt, 6, eos_id=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_is_exhaustive_search(seed):
    """With a beam as wide as the search space, beam search returns the most probable sequence."""
    model = _tiny_lm(seed, vocab=4)
    prompt, n = [1, 2], 3
    best = max(itertools.product(range(4), repeat=n), key=lambda c: sequence_log_prob(model, prompt, list(c)))
    assert beam_search(model, prompt, 64, n, eos_id=None, length_penalty=0.0) == list(best)


def test_long_source_is_cut_and_the_template_cue_kept(tmp_path):
    from fastlm.data.tokenizer import train_bpe

    task = get_task("translation")
    tc = _config(task, "unused.jsonl", None)
    tok = train_bpe(["red cat blue dog English German"] * 20, 300)
    (e,) = task.encode(tc, [{"source": "red cat " * 200, "target": "rot katze"}], tok, {})
    cue = tok.encode("\nGerman:", add_special_tokens=False).ids
    assert e["prompt"][-len(cue):] == cue
    assert len(e["prompt"]) <= tc.config.data.seq_len // 2
    assert len(e["prompt"]) + len(e["target"]) <= tc.config.data.seq_len
