"""YAML reading that refuses what is unsafe or ambiguous to load: huge files, alias bombs, deep nesting,
duplicate keys and non-mapping documents."""

from __future__ import annotations

import os

import yaml

from .errors import ConfigError

MAX_BYTES = 64 << 10  # a recipe or config larger than 64 KiB is not a hand-written file (shipped ones are < 2 KiB)
MAX_ALIASES = 64
MAX_DEPTH = 32  # nesting of mappings and lists; a recipe needs about 5
MAX_VALUES = 20_000  # values after alias expansion (a recipe has a few hundred)


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts alias expansions (a 'billion laughs' document uses thousands), bounds nesting and
    refuses duplicate keys (YAML would silently keep the last one)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"YAML uses more than {MAX_ALIASES} aliases; refusing (possible alias bomb)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML nests deeper than {MAX_DEPTH} levels (line {mark.line + 1}); refusing")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} on lines {seen[key] + 1} and {key_node.start_mark.line + 1} "
                                      "(YAML would keep only the last; write it once)")
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def count_values(doc, limit: int = MAX_VALUES) -> int:
    """Values in `doc` counting every alias expansion, stopping early past `limit` (aliases make shared objects, so
    a small file can stand for billions of values that any later walk, or an error message, would expand)."""
    n, stack = 0, [doc]
    while stack:
        x = stack.pop()
        n += 1
        if n > limit:
            return n
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return n


def parse_yaml(text: str, name: str = "<string>") -> dict:
    if len(text.encode()) > MAX_BYTES:
        raise ConfigError(f"{name}: YAML larger than {MAX_BYTES} bytes; refusing")
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {_short(str(e))}") from None
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{name}: YAML nested too deeply to read; refusing") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, got {type(doc).__name__}")
    if count_values(doc) > MAX_VALUES:
        raise ConfigError(f"{name}: YAML expands to more than {MAX_VALUES} values (aliases included); refusing")
    return doc


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


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
