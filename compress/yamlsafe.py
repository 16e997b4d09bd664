"""YAML reading that refuses what is unsafe to load: huge files, alias bombs, non-mapping documents."""

from __future__ import annotations

import os

import yaml

from .errors import ConfigError

MAX_BYTES = 1 << 20  # a recipe or config larger than 1 MiB is not a hand-written file
MAX_ALIASES = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts alias expansions (a 'billion laughs' document uses thousands)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"YAML uses more than {MAX_ALIASES} aliases; refusing (possible alias bomb)")
        return super().compose_node(parent, index)


def parse_yaml(text: str, name: str = "<string>") -> dict:
    if len(text.encode()) > MAX_BYTES:
        raise ConfigError(f"{name}: YAML larger than {MAX_BYTES} bytes; refusing")
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"YAML file {path!r} does not exist")
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes is larger than the {MAX_BYTES}-byte limit for YAML; refusing")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read YAML file {path!r}: {e}") from None
    return parse_yaml(text, path)
