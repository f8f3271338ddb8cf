"""The recurrent benchmark suite measures both sides and reports consistent ratios (tiny shapes)."""
from __future__ import annotations

from fastlm.bench import registry
from fastlm.bench.suites import recurrent


def test_recurrent_suite_rows(monkeypatch):
    monkeypatch.setattr(recurrent, "QUICK_TRAIN_SHAPES", [(2, 3, 8, 2)])
    monkeypatch.setattr(recurrent, "QUICK_INFER_SHAPES", [(8, 2)])
    monkeypatch.setattr(recurrent, "INFER_TOKENS", 3)
    rows = recurrent.measure(registry.Options(quick=True, repeat=2))
    assert [r["case"] for r in rows] == ["lstm train B2 T3 H8 L2", "lstm infer b1 H8 L2",
                                         "gru train B2 T3 H8 L2", "gru infer b1 H8 L2"]
    for r in rows:
        assert r["fastlm"] > 0 and r["torch"] > 0 and r["threads"] >= 1
        ratio = r["fastlm"] / r["torch"] if r["unit"] == "tokens/s" else r["torch"] / r["fastlm"]
        assert abs(r["speedup"] - ratio) < 1e-6 * ratio
    assert registry.get_suite("recurrent").baseline.startswith("torch.nn.LSTM")
