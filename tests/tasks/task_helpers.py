"""Small synthetic datasets and configs for the task tests (fast on a busy 2-core machine)."""
import json
import random

WORDS = {
    "animal": "cat dog horse cow sheep goat mouse bird fish frog".split(),
    "color": "red blue green yellow purple orange black white pink brown".split(),
    "number": "one two three four five six seven eight nine ten".split(),
}
FILLER = "the a of and to in is it that on".split()


def synthetic_records(n: int, seed: int = 0, labels=("animal", "color", "number")) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(2, 4))] + rng.sample(FILLER, 3)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def tiny_config(train: str, validation: str | None = None, family: str = "llama", **train_keys) -> dict:
    model = {"family": family, "n_layer": 1, "n_head": 2, "d_model": 32}
    if family == "llama":
        model["n_kv_head"] = 2
    t = {"steps": 30, "global_batch_size": 16, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 3,
         "min_lr": 3e-4, "weight_decay": 0.0, "log_every": 1, "eval_every": 0, "precision": "fp32"}
    t.update(train_keys)
    task = {"train": train}
    if validation:
        task["validation"] = validation
    return {"task": task, "model": model, "data": {"vocab_size": 300, "seq_len": 32}, "train": t,
            "checkpoint": {"every": 0}}
