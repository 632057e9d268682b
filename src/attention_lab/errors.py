"""The errors that ``train.py`` reports as one clear message instead of a traceback."""


class AttentionLabError(Exception):
    """Base class: a problem the user fixes by changing a setting."""


class ConfigError(AttentionLabError, ValueError):
    """A config value that cannot work; the message names the key to change."""


class DataNotFoundError(AttentionLabError, RuntimeError):
    """Data files missing and not downloadable; the message names the folder and the setting."""


class DataFormatError(AttentionLabError, ValueError):
    """Data files that exist but cannot be used (empty, mismatched); the message names them."""
