"""fastlm.accountability: model cards (card), watermarked generation and its detection (watermark),
per-token explanations of predictions (explain)."""
