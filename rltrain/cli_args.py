"""``key=value`` command lines of the small tools (``rltrain.enjoy``, ``rltrain.export``): each key
declared with its default and type; an unknown key or a bad value is a :class:`ConfigError` naming it."""

from __future__ import annotations

from rltrain.errors import ConfigError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ConfigError(f"{key}={value!r}: accepted values are true or false")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
    return None if value.lower() in ("null", "none", "") else value


def parse_args(argv: list[str], defaults: dict, required: tuple[str, ...], usage: str) -> dict:
    """``argv`` (``key=value`` strings) over ``defaults``; ``required`` keys must be given."""
    values = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        if not sep or key not in defaults:
            raise ConfigError(f"unknown argument {arg!r}; accepted: {', '.join(f'{k}=' for k in defaults)}\n{usage}")
        values[key] = _convert(key, value, defaults[key])
    missing = [key for key in required if values[key] is None]
    if missing:
        raise ConfigError(f"missing {', '.join(f'{k}=' for k in missing)}\n{usage}")
    return values
