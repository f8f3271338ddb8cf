"""fastlm.privacy: private training (see the modules of this package)."""
