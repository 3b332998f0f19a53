"""Errors that mean "the user asked for something that cannot work", reported without traceback."""


class ConfigError(ValueError):
    """A config value or an input does not fit (names the key, the value and the fix)."""
