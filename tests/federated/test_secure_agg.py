"""Secure aggregation: fixed point against Python-int arithmetic, Shamir thresholds, the protocol's sum
against the plain float64 sum (exact in fixed point, with and without dropout), the independence of what
the server sees from the update, discarded rounds, and the byte accounting."""
from __future__ import annotations

import itertools
import logging
import math
import secrets

import pytest
import torch
from scipy import stats

from fastlm.federated.secure import masks, shamir
from fastlm.federated.secure_agg import (
    ClientMasker,
    FixedPoint,
    RoundDiscarded,
    SecureAggregator,
    reconstruct_secrets,
    secure_agg_overhead,
    sum_masked,
    unmask,
)
from fastlm.train.errors import FastlmError

SEED = b"round-7"


def _updates(n_clients: int, numel: int, scale: float = 3.0, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {u: torch.randn(numel, generator=g) * scale for u in range(n_clients)}


def _float64_sum(updates, ids) -> torch.Tensor:
    return torch.stack([updates[u].double() for u in ids]).sum(0)


def _fixed_point_sum(updates, ids, fp: FixedPoint, n_clients: int) -> torch.Tensor:
    """The exact sum of the encodings, decoded: what the masks must cancel to, bit for bit."""
    return fp.decode(sum_masked([fp.encode(updates[u], n_clients) for u in ids], fp))


# ---------------------------------------------------------------- fixed point

def test_fixed_point_round_trip_and_range():
    fp = FixedPoint(frac_bits=20, modulus_bits=62)
    x = torch.tensor([0.0, 1.0, -1.0, 0.3, -0.3, 1e-7, -1e-7, 12345.678, -12345.678, 2.0 ** -21, -(2.0 ** -21)])
    v = fp.encode(x)
    assert v.dtype == torch.int64 and (v >= 0).all() and (v < 2 ** 62).all()
    assert (fp.decode(v) - x.double()).abs().max() <= 2.0 ** -21
    ints = [round(float(a) * 2 ** 20) % 2 ** 62 for a in x.double()]   # Python-int reference
    assert v.tolist() == ints


def test_fixed_point_sum_within_the_rounding_bound():
    fp = FixedPoint(frac_bits=12, modulus_bits=40)
    updates = _updates(9, 5000, scale=100.0)
    decoded = _fixed_point_sum(updates, range(9), fp, 9)
    error = (decoded - _float64_sum(updates, range(9))).abs().max()
    assert error <= fp.rounding_bound(9)
    assert error > fp.rounding_bound(9) / 20  # the bound is not vacuous at 12 fractional bits


def test_fixed_point_overflow_edge_against_python_ints():
    fp = FixedPoint(frac_bits=4, modulus_bits=16)
    n = 3
    limit = (2 ** 15 - 1) // n
    assert fp.max_abs(n) == limit / 16
    top = torch.full((1,), fp.max_abs(n), dtype=torch.float64)
    for sign in (1, -1):   # n clients at the limit still decode exactly
        total = sum_masked([fp.encode(sign * top, n) for _ in range(n)], fp)
        assert fp.decode(total).item() == sign * n * limit / 16
    with pytest.raises(FastlmError, match="overflow the modulus"):
        fp.encode(top + 1 / 16, n)
    with pytest.raises(FastlmError, match="overflow the modulus"):
        fp.encode(torch.tensor([1e30]), 1)
    with pytest.raises(FastlmError, match="overflow"):
        SecureAggregator([0, 1, 2], 2, fp, SEED).aggregate({u: torch.full((4,), 700.0) for u in range(3)})


def test_fixed_point_bad_input():
    fp = FixedPoint()
    with pytest.raises(FastlmError, match="non-finite"):
        fp.encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(FastlmError, match="float tensor"):
        fp.encode(torch.tensor([1, 2]))
    with pytest.raises(FastlmError, match="int64"):
        fp.decode(torch.tensor([1.0]))
    with pytest.raises(FastlmError, match="modulus_bits"):
        FixedPoint(modulus_bits=64)
    with pytest.raises(FastlmError, match="frac_bits"):
        FixedPoint(frac_bits=61, modulus_bits=62)


def test_apply_masks_equals_masks_added_one_by_one():
    fp = FixedPoint(frac_bits=10, modulus_bits=37)
    x = fp.encode(torch.randn(1001) * 100)
    keys = [secrets.token_bytes(32) for _ in range(5)]
    expected = x
    for i, key in enumerate(keys):
        mask = masks.expand_mask(key, 1001, 37)
        assert (mask >= 0).all() and (mask < 2 ** 37).all()
        expected = fp.add(expected, mask) if i < 2 else fp.sub(expected, mask)
    assert torch.equal(masks.apply_masks(x, keys[:2], keys[2:], 37), expected)
    assert torch.equal(masks.apply_masks(expected, keys[2:], keys[:2], 37), x)
    python_sum = [(int(a) + int(b)) % 2 ** 37 for a, b in zip(x, expected)]
    assert sum_masked([x, expected], fp).tolist() == python_sum


# ---------------------------------------------------------------- Shamir

@pytest.mark.parametrize("n,t", [(6, 3), (5, 5), (4, 2)])
def test_shamir_any_t_shares_reconstruct(n, t):
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, list(range(1, n + 1)), t)
    for subset in itertools.combinations(shares.values(), t):
        assert shamir.reconstruct(subset, t) == secret
        assert shamir.reconstruct(reversed(subset), t) == secret


def test_shamir_t_minus_1_shares_give_a_random_field_element():
    secret = secrets.token_bytes(32)
    for _ in range(20):
        shares = list(shamir.split(secret, [1, 2, 3, 4, 5], 4).values())
        guess = shamir.interpolate_at_zero(shares[:3])
        # uniform over GF(2**521 - 1): not the secret, and not even a 32-byte value (probability 2**-265)
        assert guess != int.from_bytes(secret, "big") and guess >> 256
        with pytest.raises(FastlmError, match="3 share"):
            shamir.reconstruct(shares[:3], 4)


def test_shamir_corrupted_share_is_detected_and_bytes_round_trip():
    shares = list(shamir.split(b"\x01" * 32, [1, 2, 3], 3).values())
    assert [shamir.Share.from_bytes(s.to_bytes()) for s in shares] == shares
    # a garbled share moves f(0) to a random field element: not a 32-byte value (the protocol's
    # commitments catch small offsets too, see test_a_corrupted_share_discards_the_round...)
    bad = [shares[0], shares[1], shamir.Share(shares[2].x, secrets.randbelow(shamir.PRIME))]
    with pytest.raises(FastlmError, match="do not reconstruct"):
        shamir.reconstruct(bad, 3)
    with pytest.raises(FastlmError, match="distinct"):
        shamir.split(b"x", [1, 1, 2], 2)


# ---------------------------------------------------------------- the protocol

@pytest.mark.parametrize("numel", [1, 7, 1001, 100_000])
@pytest.mark.parametrize("n_clients", [2, 3, 7])
def test_secure_sum_equals_plain_sum(n_clients, numel):
    fp = FixedPoint()
    updates = _updates(n_clients, numel, seed=numel + n_clients)
    result = SecureAggregator(list(range(n_clients)), n_clients, fp, SEED).aggregate(updates)
    assert result.sum.dtype == torch.float64 and result.sum.shape == (numel,)
    assert (result.sum - _float64_sum(updates, range(n_clients))).abs().max() <= fp.rounding_bound(n_clients)
    # the masks cancel exactly: the integer sum of the encodings, bit for bit
    assert torch.equal(result.sum, _fixed_point_sum(updates, range(n_clients), fp, n_clients))
    assert result.survivors == list(range(n_clients)) and result.dropped == []


@pytest.mark.parametrize("drops", [{3}, {0, 4, 6}, {1, 2, 5}])
def test_dropout_after_masking_is_recovered_exactly(drops):
    ids, fp = [10, 11, 12, 13, 14, 15, 16], FixedPoint(frac_bits=16, modulus_bits=50)
    drops = {ids[i] for i in drops}
    all_updates = {ids[i]: x for i, x in _updates(7, 513).items()}
    updates = {u: x for u, x in all_updates.items() if u not in drops or u % 2}  # a dropped update may be absent
    result = SecureAggregator(ids, 4, fp, SEED).aggregate(updates, dropped_after_masking=drops)
    survivors = sorted(set(ids) - drops)
    assert result.survivors == survivors and result.dropped == sorted(drops)
    assert torch.equal(result.sum, _fixed_point_sum(all_updates, survivors, fp, len(ids)))
    assert (result.sum - _float64_sum(all_updates, survivors)).abs().max() <= fp.rounding_bound(len(survivors))
    # the survivors' masks still paired with the dropped clients: their own sum is not the answer
    assert not torch.equal(fp.decode(sum_masked(result.masked.values(), fp)), result.sum)


def test_silent_survivors_are_summed_while_t_others_answer():
    fp, updates = FixedPoint(), _updates(6, 100)
    result = SecureAggregator(list(range(6)), 3, fp, SEED).aggregate(
        updates, dropped_after_masking={5}, dropped_before_unmasking={0, 1})
    assert torch.equal(result.sum, _fixed_point_sum(updates, range(5), fp, 6))


def test_fewer_than_t_survivors_discards_the_round(caplog):
    aggregator = SecureAggregator(list(range(5)), 3, FixedPoint(), SEED)
    with caplog.at_level(logging.WARNING), pytest.raises(RoundDiscarded, match="2 of 5 clients") as info:
        aggregator.aggregate(_updates(5, 10), dropped_after_masking={0, 1, 2})
    assert "threshold 3" in info.value.reason and "round discarded" in caplog.text
    with pytest.raises(RoundDiscarded, match="2 clients answered"):
        aggregator.aggregate(_updates(5, 10), dropped_after_masking={0}, dropped_before_unmasking={1, 2})
    assert isinstance(info.value, FastlmError)


def _manual_round(n, t, updates, fp, drops=()):
    """The protocol as the lead runs it across ranks: every message moved by hand."""
    clients = {u: ClientMasker(u, SEED, fp) for u in range(n)}
    keys = {u: c.public_keys() for u, c in clients.items()}
    outboxes = {u: c.shares_for(keys, t) for u, c in clients.items()}
    for v, c in clients.items():
        c.receive_shares({u: out[v] for u, out in outboxes.items() if u != v})
    survivors = [u for u in range(n) if u not in drops]
    total = sum_masked([clients[u].mask(updates[u], keys) for u in survivors], fp)
    return clients, keys, survivors, total


def test_the_per_client_api_across_ranks():
    fp, updates = FixedPoint(), _updates(5, 33)
    clients, keys, survivors, total = _manual_round(5, 3, updates, fp, drops={2})
    answers = {v: clients[v].reveal(survivors, [2]) for v in survivors[:3]}
    recovered = reconstruct_secrets(answers, survivors, [2], keys, 3, SEED)
    assert set(recovered.self_mask_seeds) == set(survivors) and set(recovered.mask_private_keys) == {2}
    result = unmask(total, survivors, recovered, keys, SEED, fp)
    assert torch.equal(result, _fixed_point_sum(updates, survivors, fp, 5))


def test_a_corrupted_share_discards_the_round_never_a_wrong_sum():
    fp, updates = FixedPoint(), _updates(4, 9)
    clients, keys, survivors, _ = _manual_round(4, 3, updates, fp)
    answers = {v: clients[v].reveal(survivors, []) for v in survivors}
    kind, share = answers[1][2]
    answers[1][2] = (kind, shamir.Share(share.x, (share.y + 1) % shamir.PRIME))
    with pytest.raises(RoundDiscarded, match="client 2"):
        reconstruct_secrets({v: answers[v] for v in (0, 1, 3)}, survivors, [], keys, 3, SEED)


def test_a_client_never_reveals_both_secrets_of_one_peer():
    clients, _, survivors, _ = _manual_round(4, 2, _updates(4, 3), FixedPoint(), drops={3})
    clients[0].reveal(survivors, [3])
    with pytest.raises(FastlmError, match="both secrets of client 3"):
        clients[0].reveal([0, 1, 3], [2])
    with pytest.raises(FastlmError, match="survivor and dropped"):
        clients[1].reveal([0, 1, 2], [2])
    with pytest.raises(FastlmError, match="already sent its masked input"):
        clients[0].mask(torch.zeros(3), {u: c.public_keys() for u, c in clients.items()})


def test_swapped_public_keys_are_refused():
    fp = FixedPoint()
    clients = {u: ClientMasker(u, SEED, fp) for u in range(3)}
    keys = {u: c.public_keys() for u, c in clients.items()}
    clients[0].shares_for(keys, 2)
    impostor = ClientMasker(1, SEED, fp).public_keys()
    with pytest.raises(FastlmError, match="differ from those it shared with"):
        clients[0].mask(torch.zeros(3), keys | {1: impostor})
    with pytest.raises(FastlmError, match="not its own"):
        ClientMasker(1, SEED, fp).shares_for(keys, 2)


def test_tampered_share_message_is_refused():
    fp = FixedPoint()
    a, b = ClientMasker(0, SEED, fp), ClientMasker(1, SEED, fp)
    keys = {0: a.public_keys(), 1: b.public_keys()}
    message = a.shares_for(keys, 2)[1]
    b.shares_for(keys, 2)
    with pytest.raises(FastlmError, match="authentication"):
        b.receive_shares({0: message[:-1] + bytes([message[-1] ^ 1])})
    other_round = ClientMasker(1, b"round-8", fp)
    other_round.shares_for(keys | {1: other_round.public_keys()}, 2)
    with pytest.raises(FastlmError, match="authentication"):
        other_round.receive_shares({0: message})


def test_what_the_server_sees_is_independent_of_the_update():
    """Pearson r between one client's update and its masked input over many rounds: ~0 (|r| < 4/sqrt(N)),
    while the unmasked encoding gives r ~ 1; and its masked values are uniform mod 2**k whatever the update."""
    fp, rounds, numel = FixedPoint(), 40, 250
    xs, seen, plain = [], [], []
    for r in range(rounds):
        updates = _updates(3, numel, scale=1000.0, seed=r)
        updates[0] = updates[0] + 500.0 * (r % 2)  # the mean moves too
        result = SecureAggregator([0, 1, 2], 2, fp, r.to_bytes(4, "big")).aggregate(updates)
        xs.append(updates[0].double())
        seen.append(fp.decode(result.masked[0]))
        plain.append(fp.decode(fp.encode(updates[0], 3)))
    x, y, z = torch.cat(xs).numpy(), torch.cat(seen).numpy(), torch.cat(plain).numpy()
    n = len(x)
    assert abs(stats.pearsonr(x, y)[0]) < 4 / math.sqrt(n)
    assert stats.pearsonr(x, z)[0] > 0.999
    residues = torch.cat([SecureAggregator([0, 1], 2, fp, SEED).aggregate(
        {0: torch.full((2000,), value), 1: torch.zeros(2000)}).masked[0] for value in (0.0, 1e6)])
    unit = residues.double().numpy() / 2.0 ** 62
    assert stats.kstest(unit[:2000], "uniform").pvalue > 1e-6   # update 0: uniform
    assert stats.kstest(unit[2000:], "uniform").pvalue > 1e-6   # update 1e6: the same uniform
    assert stats.kstest(fp.encode(torch.full((2000,), 1e6)).double().numpy() / 2.0 ** 62, "uniform").pvalue < 1e-6


def test_byte_accounting():
    n, numel = 5, 1000
    result = SecureAggregator(list(range(n)), 3, FixedPoint(), SEED).aggregate(_updates(n, numel),
                                                                               dropped_after_masking={4})
    keys = 4 + 3 * 32                       # id, channel key, mask key, commitment
    share_message = 4 + 12 + 2 * (4 + 66) + 16  # recipient id, nonce, two shares, tag
    assert result.bytes_by_round["advertise_keys"] == n * keys + n * n * keys
    assert result.bytes_by_round["share_keys"] == 2 * n * (n - 1) * share_message
    assert result.bytes_by_round["masked_input"] == 4 * (4 + 8 * numel)
    assert result.bytes_sent == sum(result.bytes_by_round.values())
    assert result.plain_bytes == 4 * 4 * numel


def test_bad_arguments():
    fp = FixedPoint()
    with pytest.raises(FastlmError, match="threshold"):
        SecureAggregator([0, 1, 2], 4, fp, SEED)
    with pytest.raises(FastlmError, match="threshold"):
        SecureAggregator([0, 1, 2], 1, fp, SEED)
    with pytest.raises(FastlmError, match="duplicate"):
        SecureAggregator([0, 1, 1], 2, fp, SEED)
    with pytest.raises(FastlmError, match="at least 2"):
        SecureAggregator([0], 1, fp, SEED)
    with pytest.raises(FastlmError, match="round_seed"):
        SecureAggregator([0, 1], 2, fp, "seed")
    aggregator = SecureAggregator([0, 1, 2], 2, fp, SEED)
    with pytest.raises(FastlmError, match="no update from surviving clients \\[2\\]"):
        aggregator.aggregate({0: torch.zeros(3), 1: torch.zeros(3)})
    with pytest.raises(FastlmError, match="1-D of one size"):
        aggregator.aggregate({0: torch.zeros(3), 1: torch.zeros(3), 2: torch.zeros(4)})
    with pytest.raises(FastlmError, match="1-D of one size"):
        aggregator.aggregate({u: torch.zeros(2, 2) for u in range(3)})
    with pytest.raises(FastlmError, match="not in this round"):
        aggregator.aggregate({u: torch.zeros(3) for u in range(4)})
    with pytest.raises(FastlmError, match="not in this round"):
        aggregator.aggregate({u: torch.zeros(3) for u in range(3)}, dropped_after_masking={7})


def test_secure_agg_overhead_reports_ratios():
    report = secure_agg_overhead(4, 20_000, dropped=1)
    assert report["plain_bytes"] == 3 * 4 * 20_000
    assert 2.0 < report["bytes_ratio"] < 2.1   # int64 residues against float32, plus keys and shares
    assert report["time_ratio"] > 0 and report["secure_seconds"] > 0
    assert report["max_abs_error"] <= FixedPoint().rounding_bound(3)
