"""fastlm.eval: evaluation metrics (fastlm.eval.metrics), computed with the libraries that define them."""
