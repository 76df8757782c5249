"""The error raised for bad user input: caught at the entry point and printed without a traceback."""


class ConfigError(ValueError):
    """Bad input (config, environment id, dataset, ...): the message names the problem and the fix."""
