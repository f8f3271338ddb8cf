"""fastlm.lm.HMM against brute-force enumeration of state paths, hmmlearn's CategoricalHMM and the
plain-torch log-space reference (fastlm.ops.reference_hmm)."""
import itertools

import numpy as np
import pytest
import torch

from fastlm.lm import HMM
from fastlm.ops import hmm as hmm_ops
from fastlm.ops import reference_hmm as reference
from fastlm.ops._library import has_native_op

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")

BACKENDS = ["native", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "reference":
        monkeypatch.setenv("FASTLM_BACKEND", "reference")
    else:
        monkeypatch.delenv("FASTLM_BACKEND", raising=False)
        assert has_native_op("hmm_expected_counts"), "the C++ HMM kernels are not built"
    return request.param


def _model(S, V, seed=0, dtype=torch.float64):
    return HMM(S, V, seed=seed, dtype=dtype)


def _brute_force(model, x):
    """(log p(x), best path, its log-probability, log beta [T, S], gamma [T, S]) by enumerating all S^T paths."""
    start, trans, emit = (p.double().numpy() for p in (model.startprob, model.transmat, model.emissionprob))
    S, T = start.shape[0], len(x)
    paths = list(itertools.product(range(S), repeat=T))
    logp = np.array([np.log(start[z[0]]) + np.log(emit[z[0], x[0]])
                     + sum(np.log(trans[z[t - 1], z[t]]) + np.log(emit[z[t], x[t]]) for t in range(1, T))
                     for z in paths])
    total = np.logaddexp.reduce(logp)
    best = int(np.argmax(logp))
    gamma = np.zeros((T, S))
    for z, lp in zip(paths, logp):
        for t in range(T):
            gamma[t, z[t]] += np.exp(lp - total)
    # beta_t(i) = p(x_>t | z_t = i): enumerate suffix paths.
    log_beta = np.zeros((T, S))
    for t in range(T - 1):
        for i in range(S):
            terms = []
            for z in itertools.product(range(S), repeat=T - 1 - t):
                prev, lp = i, 0.0
                for k, s in enumerate(z):
                    lp += np.log(trans[prev, s]) + np.log(emit[s, x[t + 1 + k]])
                    prev = s
                terms.append(lp)
            log_beta[t, i] = np.logaddexp.reduce(terms)
    return total, np.array(paths[best]), logp[best], log_beta, gamma


@pytest.mark.parametrize("S,V,T", [(1, 3, 4), (2, 3, 5), (3, 4, 6), (4, 2, 3)])
def test_tiny_models_equal_brute_force_enumeration(backend, S, V, T):
    model = _model(S, V, seed=S * 10 + T)
    x = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(T))
    total, best_path, best_logp, log_beta, gamma = _brute_force(model, x.tolist())
    assert float(model.forward(x)) == pytest.approx(total, rel=1e-12, abs=1e-12)
    path, logp = model.viterbi(x)
    assert path.dtype == torch.long and path.tolist() == best_path.tolist()
    assert float(logp) == pytest.approx(best_logp, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(model.backward(x).numpy(), log_beta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.posteriors(x).numpy(), gamma, rtol=1e-10, atol=1e-12)


def _hmmlearn_twin(model, **kwargs):
    twin = hmmlearn_hmm.CategoricalHMM(n_components=model.n_states, n_features=model.vocab_size, init_params="",
                                       **kwargs)
    twin.startprob_ = model.startprob.double().numpy().copy()
    twin.transmat_ = model.transmat.double().numpy().copy()
    twin.emissionprob_ = model.emissionprob.double().numpy().copy()
    return twin


def _ragged(V, lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=gen) for n in lengths]


def _stacked(seqs):
    return np.concatenate([s.numpy() for s in seqs])[:, None], [len(s) for s in seqs]


@pytest.mark.parametrize("S,V", [(5, 7), (16, 33)])
def test_loglik_viterbi_posteriors_equal_hmmlearn(backend, S, V):
    model = _model(S, V, seed=3)
    seqs = _ragged(V, [40, 1, 17, 64] if backend == "native" else [20, 1, 9])
    twin = _hmmlearn_twin(model)
    X, lengths = _stacked(seqs)
    ll = model.forward(seqs)
    assert ll.shape == (len(seqs),)
    assert float(ll.sum()) == pytest.approx(twin.score(X, lengths), rel=1e-10)
    paths, logps = model.viterbi(seqs)
    offsets = np.cumsum([0] + lengths)
    for i, s in enumerate(seqs):
        one = s.numpy()[:, None]
        want_logp, want_path = twin.decode(one, algorithm="viterbi")
        assert paths[i].tolist() == want_path.tolist()
        assert float(logps[i]) == pytest.approx(want_logp, rel=1e-10)
    gamma = torch.cat(model.posteriors(seqs)).numpy()
    np.testing.assert_allclose(gamma, twin.predict_proba(X, lengths), rtol=1e-8, atol=1e-10)
    assert offsets[-1] == gamma.shape[0]


def test_fit_equals_hmmlearn_trajectory_and_parameters(backend):
    S, V = (6, 11)
    model = _model(S, V, seed=5)
    seqs = _ragged(V, [50, 30, 70, 5] if backend == "native" else [25, 12], seed=1)
    n_iter = 8 if backend == "native" else 3
    twin = _hmmlearn_twin(model, n_iter=n_iter, tol=-np.inf)  # tol -inf: hmmlearn runs all iterations
    X, lengths = _stacked(seqs)
    twin.fit(X, lengths)
    model.fit(seqs, n_iter=n_iter, tol=-float("inf"))
    np.testing.assert_allclose(model.history, list(twin.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(model.startprob.numpy(), twin.startprob_, atol=1e-9)
    np.testing.assert_allclose(model.transmat.numpy(), twin.transmat_, atol=1e-9)
    np.testing.assert_allclose(model.emissionprob.numpy(), twin.emissionprob_, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_em_never_decreases_the_likelihood(dtype):
    model = _model(8, 20, seed=7, dtype=dtype)
    data, _ = HMM(4, 20, seed=11).sample(3000, generator=torch.Generator().manual_seed(0))
    seqs = list(data.split(300))
    model.fit(seqs, n_iter=25, tol=-float("inf"))
    history = np.array(model.history)
    assert len(history) == 25
    slack = (1e-9 if dtype == torch.float64 else 2e-5) * np.abs(history).max()
    assert np.all(np.diff(history) >= -slack), np.diff(history)
    assert history[-1] > history[0] + 1.0  # it did learn something


def test_fit_stops_when_the_gain_is_below_tol():
    model = _model(3, 5, seed=2)
    seqs = _ragged(5, [100, 100], seed=3)
    model.fit(seqs, n_iter=200, tol=1e-3)
    assert 2 <= len(model.history) < 200
    assert model.history[-1] - model.history[-2] < 1e-3
    assert all(b - a >= 1e-3 for a, b in zip(model.history[:-2], model.history[1:-1]))


def test_native_ops_equal_the_reference():
    assert has_native_op("hmm_forward_scaled")
    model = _model(7, 13, seed=9)
    x, lengths, _ = model._batch(_ragged(13, [12, 0, 30, 1], seed=4))
    params = (model.startprob, model.transmat, model.emissionprob)
    for got, want in zip(torch.ops.fastlm.hmm_forward_scaled(x, lengths, *params, True),
                         reference.hmm_forward_scaled(x, lengths, *params, True)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    log_c, _ = reference.hmm_forward_scaled(x, lengths, *params, False)
    torch.testing.assert_close(torch.ops.fastlm.hmm_backward_scaled(x, lengths, *params[1:], log_c),
                               reference.hmm_backward_scaled(x, lengths, *params[1:], log_c), rtol=1e-10, atol=1e-12)
    got_path, got_lp = torch.ops.fastlm.hmm_viterbi(x, lengths, *params)
    want_path, want_lp = reference.hmm_viterbi(x, lengths, *params)
    assert torch.equal(got_path, want_path)
    torch.testing.assert_close(got_lp, want_lp, rtol=1e-12, atol=1e-12)
    want = reference.hmm_expected_counts(x, lengths, *params)
    for got in (torch.ops.fastlm.hmm_expected_counts(x, lengths, *params),
                hmm_ops.expected_counts_from_passes(x, lengths, *params)):  # the CUDA composition
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_float32_kernels_track_float64():
    m64 = _model(16, 50, seed=1)
    m32 = _model(16, 50, seed=1, dtype=torch.float32)
    seqs = _ragged(50, [500, 300], seed=2)
    torch.testing.assert_close(m32.forward(seqs).double(), m64.forward(seqs), rtol=1e-5, atol=0)
    m64.fit(seqs, n_iter=3)
    m32.fit(seqs, n_iter=3)
    np.testing.assert_allclose(m32.history, m64.history, rtol=1e-5)


def test_a_long_sequence_does_not_underflow():
    """1e5 tokens: p(x) ~ exp(-3e5), far below the smallest double; the scaled recursion stays finite."""
    model = _model(8, 30, seed=4)
    x, _ = model.sample(100_000, generator=torch.Generator().manual_seed(1))
    ll = float(model.forward(x))
    assert np.isfinite(ll) and ll < -1e5
    twin = _hmmlearn_twin(model)
    assert ll == pytest.approx(twin.score(x.numpy()[:, None]), rel=1e-9)
    model.fit([x], n_iter=2)
    assert np.all(np.isfinite(model.history)) and model.history[1] >= model.history[0]
    path, logp = model.viterbi(x)
    assert path.shape == x.shape and np.isfinite(float(logp)) and float(logp) <= ll


def test_token_logprobs_are_the_predictive_distribution():
    model = _model(5, 9, seed=6)
    x = torch.randint(0, 9, (25,))
    lp = model.token_logprobs(x)
    assert lp.shape == x.shape
    assert float(lp.sum()) == pytest.approx(float(model.forward(x)), rel=1e-12)
    for t in (0, 1, 7, 24):
        nxt = model.next_token_logprobs(x[:t])
        assert nxt.shape == (9,)
        assert float(nxt.exp().sum()) == pytest.approx(1.0, rel=1e-12)
        assert float(nxt[x[t]]) == pytest.approx(float(lp[t]), rel=1e-10)
    # by definition: log p(x_<=t) - log p(x_<t)
    prefix = [float(model.forward(x[: t + 1])) for t in range(5)]
    np.testing.assert_allclose(lp[:5].numpy(), np.diff([0.0] + prefix), rtol=1e-10)


def test_layouts_agree():
    model = _model(4, 6, seed=8)
    batch = torch.randint(0, 6, (3, 10))
    as_list = list(batch)
    torch.testing.assert_close(model.forward(batch), model.forward(as_list))
    torch.testing.assert_close(model.forward(batch[1]), model.forward(as_list)[1])
    assert model.forward(batch[1]).dim() == 0
    assert model.backward(batch).shape == (3, 10, 4) and model.backward(batch[0]).shape == (10, 4)
    assert isinstance(model.posteriors(as_list), list)
    torch.testing.assert_close(model.token_logprobs(batch)[2], model.token_logprobs(batch[2]))
    paths, _ = model.viterbi(batch)
    assert paths.shape == (3, 10) and torch.equal(paths[2], model.viterbi(batch[2])[0])
    np_batch = batch.numpy().astype(np.int32)
    torch.testing.assert_close(model.forward(np_batch), model.forward(batch))


def test_fit_is_the_same_on_one_and_many_threads():
    seqs = _ragged(12, [80] * 9, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _model(6, 12, seed=3).fit(seqs, n_iter=4, tol=-float("inf"))
        torch.set_num_threads(max(2, before))
        many = _model(6, 12, seed=3).fit(seqs, n_iter=4, tol=-float("inf"))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(one.history, many.history, rtol=1e-12)
    torch.testing.assert_close(one.emissionprob, many.emissionprob, rtol=1e-10, atol=1e-14)


def test_bad_input_names_the_problem():
    model = _model(3, 5)
    with pytest.raises(ValueError, match=r"token id 7 at position 2"):
        model.forward(torch.tensor([1, 2, 7]))
    with pytest.raises(ValueError, match=r"token id -1 at sequence 1, position 0"):
        model.forward([torch.tensor([1]), torch.tensor([-1, 2])])
    with pytest.raises(ValueError, match="integers"):
        model.forward(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="transmat must have shape"):
        model.transmat = torch.eye(4)
    with pytest.raises(ValueError, match=r"emissionprob rows must sum to 1 \(row 1"):
        bad = model.emissionprob.clone()
        bad[1, 0] += 0.5
        model.emissionprob = bad
    with pytest.raises(ValueError, match="startprob must be finite and non-negative"):
        model.startprob = torch.tensor([1.5, -0.5, 0.0])
    with pytest.raises(ValueError, match="n_states"):
        HMM(0, 5)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        model.forward(torch.zeros(2, 2, 2, dtype=torch.long))


def test_settable_parameters_are_used():
    model = _model(2, 2)
    model.startprob = [1.0, 0.0]
    model.transmat = [[0.0, 1.0], [1.0, 0.0]]
    model.emissionprob = [[1.0, 0.0], [0.0, 1.0]]
    x = torch.tensor([0, 1, 0, 1])
    assert float(model.forward(x)) == pytest.approx(0.0, abs=1e-12)
    assert float(model.forward(torch.tensor([0, 0]))) == -np.inf
    assert model.viterbi(x)[0].tolist() == [0, 1, 0, 1]
    tokens, states = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [0, 1, 0, 1, 0, 1] and states.tolist() == [0, 1, 0, 1, 0, 1]


def test_sample_follows_the_parameters():
    model = _model(3, 4, seed=12)
    tokens, states = model.sample(20000, generator=torch.Generator().manual_seed(3))
    assert tokens.shape == states.shape == (20000,)
    counts = torch.zeros(3, 3, dtype=torch.float64)
    counts.index_put_((states[:-1], states[1:]), torch.ones(19999, dtype=torch.float64), accumulate=True)
    empirical = counts / counts.sum(1, keepdim=True)
    torch.testing.assert_close(empirical, model.transmat, atol=0.03, rtol=0)


def test_generate():
    model = _model(4, 10, seed=13)
    prompt = torch.tensor([3, 1, 4])
    out = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0))
    assert out.shape == (9,) and out[:3].tolist() == [3, 1, 4] and int(out.max()) < 10
    greedy = model.generate(prompt, 1, top_k=1)
    assert int(greedy[-1]) == int(model.next_token_logprobs(prompt).argmax())
    greedy2 = model.generate(prompt, 2, top_k=1)
    assert int(greedy2[-1]) == int(model.next_token_logprobs(greedy2[:-1]).argmax())


def test_save_and_load_round_trip(tmp_path):
    model = _model(5, 8, seed=14).fit(_ragged(8, [40, 40]), n_iter=3)
    path = tmp_path / "hmm.safetensors"
    model.save(path)
    loaded = HMM.load(path)
    assert (loaded.n_states, loaded.vocab_size) == (5, 8)
    for name in ("startprob", "transmat", "emissionprob"):
        assert torch.equal(getattr(loaded, name), getattr(model, name))
    assert loaded.history == model.history
    assert [p.name for p in tmp_path.iterdir()] == ["hmm.safetensors"]  # no temporary left behind
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a fastlm HMM file"):
        HMM.load(tmp_path / "other.safetensors")


def test_sampled_tokens_follow_the_emissions():
    model = _model(2, 3, seed=15)
    tokens, states = model.sample(20000, generator=torch.Generator().manual_seed(4))
    for s in range(2):
        freq = torch.bincount(tokens[states == s], minlength=3).double()
        torch.testing.assert_close(freq / freq.sum(), model.emissionprob[s], atol=0.03, rtol=0)


def test_pseudocount_keeps_unseen_tokens_possible():
    seqs = [torch.tensor([0, 1, 2, 1, 0] * 20)]
    plain = _model(3, 6, seed=1).fit(seqs, n_iter=5)
    smoothed = _model(3, 6, seed=1).fit(seqs, n_iter=5, emission_pseudocount=0.01)
    unseen = torch.tensor([0, 5, 1])
    assert float(plain.token_logprobs(unseen)[1]) < -30  # EM drove p(token 5) to ~0
    lp = smoothed.token_logprobs(unseen)
    assert torch.isfinite(lp).all() and float(lp[1]) > -15
    assert float(smoothed.emissionprob[:, 5].min()) > 0
    with pytest.raises(ValueError, match="no tokens"):
        _model(3, 6).fit([torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="emission_pseudocount"):
        _model(3, 6).fit(seqs, emission_pseudocount=-1)


def test_perplexity_is_exp_of_the_mean_negative_token_logprob():
    model = _model(3, 5, seed=16)
    seqs = _ragged(5, [10, 3])
    want = np.exp(-np.mean(np.concatenate([t.numpy() for t in model.token_logprobs(seqs)])))
    assert model.perplexity(seqs) == pytest.approx(want, rel=1e-12)
    # uniform emissions: every token has probability 1/V whatever the states
    model.emissionprob = torch.full((3, 5), 0.2, dtype=torch.float64)
    assert model.perplexity(seqs) == pytest.approx(5.0, rel=1e-12)
    assert "n_states=3" in repr(model)
