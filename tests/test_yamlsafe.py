"""YAML that is unsafe to load is refused before anything else happens."""

import pytest

from compress.errors import ConfigError
from compress.yamlsafe import MAX_BYTES, parse_yaml, read_yaml


def test_plain_mapping():
    assert parse_yaml("a: 1\nb: [x, y]\n") == {"a": 1, "b": ["x", "y"]}


def test_alias_bomb_refused():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    with pytest.raises(ConfigError, match="alias"):
        parse_yaml("\n".join(lines))


def test_python_tags_refused():
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_yaml("x: !!python/object/apply:os.system ['echo hi']")


def test_huge_file_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("a: " + "x" * (MAX_BYTES + 10))
    with pytest.raises(ConfigError, match="limit"):
        read_yaml(str(p))


def test_non_mapping_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        parse_yaml("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(str(tmp_path / "nope.yaml"))
