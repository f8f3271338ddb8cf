"""Pipeline schedules and stage partitioning, without processes: op order, counts, memory, bubble."""
from __future__ import annotations

import itertools

import pytest

from fastlm.parallel.pipeline import (
    Action,
    check_layout,
    make_schedule,
    partition_layers,
    simulate,
    stage_ranks,
    theoretical_bubble,
)
from fastlm.parallel.pipeline.schedules import check_transfer_order, transfers

LAYOUTS = [("gpipe", pp, m, 1) for pp in (1, 2, 3, 4) for m in (1, 2, 3, 5, 8)] + \
          [("1f1b", pp, m, 1) for pp in (1, 2, 3, 4) for m in (1, 2, 3, 5, 8)] + \
          [("interleaved", pp, m, v) for pp in (1, 2, 3, 4) for v in (1, 2, 3) for m in (pp, 2 * pp, 3 * pp)]


def all_ranks(schedule, pp, m, v):
    return [make_schedule(schedule, pp, m, r, v) for r in range(pp)]


@pytest.mark.parametrize("schedule,pp,m,v", LAYOUTS)
def test_every_microbatch_runs_once_forward_before_backward(schedule, pp, m, v):
    for rank, actions in enumerate(all_ranks(schedule, pp, m, v)):
        assert sorted(actions, key=repr) == sorted({Action(k, i, c) for k in "FB" for i in range(m) for c in range(v)},
                                                   key=repr)
        position = {a: i for i, a in enumerate(actions)}
        for i, c in itertools.product(range(m), range(v)):
            assert position[Action("F", i, c)] < position[Action("B", i, c)]
    simulate(all_ranks(schedule, pp, m, v), m, v)  # and the ranks together never deadlock
    # Between every pair of ranks the messages arrive in the order they are sent (NCCL matches by order).
    check_transfer_order(all_ranks(schedule, pp, m, v), v)
    sends, _ = transfers(all_ranks(schedule, pp, m, v), v)
    assert sum(map(len, sends.values())) == 2 * m * (pp * v - 1)  # an activation and a gradient per boundary


@pytest.mark.parametrize("schedule,pp,m,v", LAYOUTS)
def test_simulated_bubble_is_the_theoretical_one(schedule, pp, m, v):
    # Equal stage costs, backward = 2 forwards, free transfers: the idle fraction is (p-1)/(m v + p-1).
    sim = simulate(all_ranks(schedule, pp, m, v), m, v, forward_time=1.0, backward_time=2.0)
    assert sim.bubble == pytest.approx(theoretical_bubble(pp, m, v), abs=1e-12)


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 4), (4, 8), (3, 7), (4, 2)])
def test_activation_memory_1f1b_vs_gpipe(pp, m):
    gp = simulate(all_ranks("gpipe", pp, m, 1), m).peak_live
    ofob = simulate(all_ranks("1f1b", pp, m, 1), m).peak_live
    assert gp == [m] * pp                                   # GPipe holds every micro-batch
    assert ofob == [min(pp - r, m) for r in range(pp)]      # 1F1B: at most pp on the first stage
    assert ofob[0] == min(pp, m)


def test_1f1b_steady_state_alternates():
    assert [repr(a) for a in make_schedule("1f1b", 4, 6, 1)] == \
        ["F0", "F1", "F2", "B0", "F3", "B1", "F4", "B2", "F5", "B3", "B4", "B5"]
    assert [repr(a) for a in make_schedule("1f1b", 4, 6, 3)] == \
        ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3", "F4", "B4", "F5", "B5"]


def test_interleaved_goes_through_the_chunks_in_groups_of_pp():
    actions = make_schedule("interleaved", 2, 4, 0, 2)
    assert [repr(a) for a in actions[:4]] == ["F0", "F1", "F0.1", "F1.1"]
    # The last stage (rank 1's chunk 1) starts its backward right after its forward.
    last = make_schedule("interleaved", 2, 4, 1, 2)
    assert last.index(Action("B", 0, 1)) == last.index(Action("F", 0, 1)) + 1
    # Interleaving shrinks the bubble by v.
    assert simulate(all_ranks("interleaved", 4, 8, 2), 8, 2).bubble < simulate(all_ranks("1f1b", 4, 8, 1), 8).bubble


def test_a_schedule_that_waits_on_itself_is_rejected():
    m = 2
    good = all_ranks("1f1b", 2, m, 1)
    # rank 0 wants B0 before rank 1 ran F0, and rank 1 waits for F1 that rank 0 never sends in time
    bad = [[Action("F", 0), Action("B", 0), Action("F", 1), Action("B", 1)],
           [Action("F", 1), Action("B", 1), Action("F", 0), Action("B", 0)]]
    simulate(good, m)
    with pytest.raises(ValueError, match="deadlock"):
        simulate(bad, m)
    with pytest.raises(ValueError, match="before its forward"):
        simulate([[Action("B", 0), Action("F", 0), Action("F", 1), Action("B", 1)], good[1]], m)
    with pytest.raises(ValueError, match="expected 4"):
        simulate([good[0][:-1], good[1]], m)
    # Runs (gloo matches by tag) but receives out of sending order: NCCL would mismatch them.
    swapped = [good[0], [Action("F", 1), Action("F", 0), Action("B", 0), Action("B", 1)]]
    simulate(swapped, m)
    with pytest.raises(ValueError, match="rank 0 sends .* to rank 1, which receives"):
        check_transfer_order(swapped)


def test_invalid_layouts_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"micro-batches \(3\) must be a multiple of pp = 2"):
        check_layout("interleaved", 2, 3, 2)
    with pytest.raises(ValueError, match=r"micro-batches \(2\) must be a multiple of pp = 4"):
        make_schedule("interleaved", 4, 2, 0, 2)
    with pytest.raises(ValueError, match="virtual_stages = 2 needs schedule = \"interleaved\""):
        make_schedule("1f1b", 2, 4, 0, 2)
    with pytest.raises(ValueError, match="expected one of gpipe, 1f1b, interleaved"):
        make_schedule("zero-bubble", 2, 4, 0)
    with pytest.raises(ValueError, match="6 stages .* only 4 layers"):
        partition_layers([1.0] * 4, 6)


def _brute_force(costs, k, first, last):
    n, best = len(costs), None
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        loads = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
        loads[0] += first
        loads[-1] += last
        if best is None or max(loads) < best:
            best = max(loads)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_partition_minimizes_the_largest_stage(seed):
    import random

    rng = random.Random(seed)
    n = rng.randint(2, 9)
    k = rng.randint(1, n)
    costs = [rng.uniform(0.1, 3.0) for _ in range(n)]
    first, last = rng.uniform(0, 4), rng.uniform(0, 4)
    counts = partition_layers(costs, k, first, last)
    assert len(counts) == k and sum(counts) == n and min(counts) >= 1
    bounds = [sum(counts[:i]) for i in range(k + 1)]
    loads = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
    loads[0] += first
    loads[-1] += last
    assert max(loads) == pytest.approx(_brute_force(costs, k, first, last))


def test_stage_ranks_follow_megatron_interleaving():
    assert stage_ranks(4, 2) == [[0, 2], [1, 3]]
    assert stage_ranks(8, 4) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_split_gpt_keeps_names_and_balances_by_parameters():
    import torch

    from fastlm.models import GPT, GPTConfig
    from fastlm.parallel.pipeline import PipelineStage, plan_stage_layers

    torch.manual_seed(0)
    model = GPT(GPTConfig(family="llama", vocab_size=512, n_layer=6, n_head=2, n_kv_head=1, d_model=32,
                          max_seq_len=16, tie_embeddings=False))
    # The embeddings (first stage) and the head (last) weigh 16k parameters each, a block about 10k:
    # they take fewer blocks than the middle stages.
    layers = plan_stage_layers(model, 4, "params")
    assert sum(layers) == 6 and layers[0] <= layers[1] and layers[-1] <= layers[2]
    assert plan_stage_layers(model, 3, stage_layers=[1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ValueError, match="add up to model.n_layer = 6"):
        plan_stage_layers(model, 3, stage_layers=[1, 2, 2])
    with pytest.raises(ValueError, match="7 stages but model.n_layer = 6"):
        plan_stage_layers(model, 7)
    timed = plan_stage_layers(model, 2, "time", micro_batch_size=1, seq_len=16)
    assert sum(timed) == 6 and min(timed) >= 1
    full = set(model.state_dict())
    stages = [PipelineStage(model, [1, 2, 3], [s]) for s in range(3)]
    keys = [set(s.module.state_dict()) for s in stages]
    assert set().union(*keys) == full and sum(map(len, keys)) == len(full)
    assert "tok_emb.weight" in keys[0] and "lm_head.weight" in keys[2] and "blocks.5.mlp.fc.weight" in keys[2]
    assert all(type(s.module) is GPT for s in stages)  # a stage is the model, pruned
    # the stages' own forwards, one after the other, equal the whole model (logits and loss)
    x = torch.randint(0, 512, (2, 16))
    h = None
    for s in stages:
        h = s.chunks[0](x, hidden_states=h)
    torch.testing.assert_close(h, model(x), rtol=1e-5, atol=1e-5)
    h = stages[1].chunks[0](x, hidden_states=stages[0].chunks[0](x))
    _, loss = stages[2].chunks[0](x, labels=x, hidden_states=h, return_logits=False)
    torch.testing.assert_close(loss, model(x, labels=x)[1], rtol=1e-5, atol=1e-5)
    assert model.tok_emb is not None and len(model.blocks) == 6  # pruning leaves the model whole


def test_split_encoder_and_tied_embeddings():
    import torch

    from fastlm.models import EncoderConfig, EncoderForMaskedLM
    from fastlm.parallel.pipeline import PipelineStage

    torch.manual_seed(0)
    model = EncoderForMaskedLM(EncoderConfig(family="bert", vocab_size=128, n_layer=4, n_head=2, d_model=32,
                                             max_seq_len=16), sentence_order=True)
    stages = [PipelineStage(model, [2, 2], [s]) for s in range(2)]
    # The last stage keeps the tied word embedding registered (its weight is the MLM decoder's).
    assert "encoder.tok_emb.weight" in stages[1].module.state_dict()
    assert stages[0].tied_weight() is model.encoder.tok_emb.weight is stages[1].tied_weight()
    assert stages[1].chunks[0].encoder.tok_emb is None and stages[1].module.sentence_order
    ids = torch.randint(4, 128, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padded rows: each stage packs the real tokens again
    labels = ids.masked_fill(mask == 0, -100)
    sop = torch.tensor([0, 1, 1])
    h = stages[0].chunks[0](ids, attention_mask=mask)
    assert h.shape == (3, 16, 32) and bool((h[1, 9:] == 0).all())
    _, loss = stages[1].chunks[0](ids, attention_mask=mask, labels=labels, sentence_order_labels=sop,
                                  hidden_states=h)
    torch.testing.assert_close(loss, model(ids, mask, labels=labels, sentence_order_labels=sop)[1],
                               rtol=1e-5, atol=1e-5)


def test_shared_blocks_are_not_split():
    import torch

    from fastlm.models import EncoderConfig, EncoderForMaskedLM
    from fastlm.parallel.pipeline import PipelineStage

    albert = EncoderForMaskedLM(EncoderConfig(family="albert", vocab_size=64, n_layer=4, n_head=2, d_model=32,
                                              embedding_size=16, max_seq_len=16))
    with pytest.raises(ValueError, match="shared blocks"):
        PipelineStage(albert, [2, 2], [0])
    with pytest.raises(ValueError, match="Linear does not name its pipeline parts"):
        PipelineStage(torch.nn.Linear(2, 2), [1], [0])
