"""Model loaders: official SALMONN layout, this project's artifacts, and named presets."""

from .spec import SPEC_HELP, load_model

__all__ = ["load_model", "SPEC_HELP"]
