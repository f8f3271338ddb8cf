"""fastlm.privacy: private training (DP-SGD) and leakage audits (fastlm.privacy.audit)."""
