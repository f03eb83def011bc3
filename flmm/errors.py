"""Exceptions that carry a message meant for the user, never a deep library traceback."""


class FlmmError(Exception):
    """Base class of the errors flmm raises on purpose, with a message that says what to do."""


class ConfigError(FlmmError, ValueError):
    """A config key is unknown, has the wrong type, or names something that does not exist."""


class DataError(FlmmError):
    """A dataset file or record is missing or malformed; the message names the file and the record."""


class MissingWeightsError(FlmmError, FileNotFoundError):
    """Model weights are not where the config says; the message says what is missing and where it goes."""
