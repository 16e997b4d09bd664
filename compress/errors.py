"""User-facing errors: the CLI prints these without a traceback and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (recipe, checkpoint, audio, CLI arguments).

    The message must name the problem and, where there is a closed set, the valid choices.
    """

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded safely or is malformed."""


class AudioError(UserError):
    """An audio file that cannot be used as model input."""


class ConfigError(UserError):
    """A config or recipe field that is missing, unknown or out of range."""


def choices(values) -> str:
    """Format a closed set of valid values for an error message."""
    return ", ".join(repr(v) for v in sorted(values))


def check_flags(obj, what: str) -> None:
    """Refuse a dataclass whose bool fields hold anything but True or False (a "False" string would read as true)."""
    from dataclasses import fields

    flags = [f.name for f in fields(obj) if f.type in ("bool", bool) and not isinstance(getattr(obj, f.name), bool)]
    if flags:
        raise ConfigError(f"{what} {flags} take true or false, got {[getattr(obj, n) for n in flags]}")
