"""Errors the CLI reports as one line ("fastlm: error: ...") instead of a traceback."""


class FastlmError(Exception):
    """A problem with the user's input or files, described in one line."""


class ConfigError(FastlmError, ValueError):
    """A bad config key, value, type or combination."""


class CheckpointError(FastlmError):
    """A missing, truncated or mismatched checkpoint or run directory."""
