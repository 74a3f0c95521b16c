from dataclasses import dataclass, field
from typing import Literal

import pytest

from lowssl.config import ConfigError, config_hash, from_dict, load, require, to_dict


@dataclass
class Inner:
    scale: tuple[float, float] = (0.3, 1.0)
    size: int | Literal["auto"] = 128

    def __post_init__(self):
        require(
            0 < self.scale[0] <= self.scale[1] <= 1, "scale", f"need 0 < min <= max <= 1, got {self.scale}"
        )


@dataclass
class Outer:
    name: Literal["dino", "swav", "moco"] = "dino"
    epochs: int = 200
    lr: float = 0.48
    clip: float | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_lists_become_tuples():
    config = from_dict(Outer, {"inner": {"scale": [0.14, 1]}, "lr": 1})
    assert config.inner.scale == (0.14, 1.0) and isinstance(config.lr, float)


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.sclae'.*Did you mean 'scale'"):
        from_dict(Outer, {"inner": {"sclae": [0.3, 1.0]}})


def test_literal_lists_allowed_values():
    with pytest.raises(
        ConfigError, match=r"'name': 'byol' is not allowed; allowed values: 'dino', 'swav', 'moco'"
    ):
        from_dict(Outer, {"name": "byol"})


def test_types_are_checked():
    with pytest.raises(ConfigError, match="'epochs': expected an integer"):
        from_dict(Outer, {"epochs": "200"})
    with pytest.raises(ConfigError, match="'inner.scale': expected 2 values"):
        from_dict(Outer, {"inner": {"scale": [0.1, 0.2, 0.3]}})
    assert from_dict(Outer, {"inner": {"size": "auto"}}).inner.size == "auto"
    with pytest.raises(ConfigError, match="inner.size"):
        from_dict(Outer, {"inner": {"size": "big"}})


def test_post_init_errors_name_the_nested_key():
    with pytest.raises(ConfigError, match=r"config key 'inner.scale': need 0 < min <= max <= 1"):
        from_dict(Outer, {"inner": {"scale": [0.5, 0.2]}})


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: swav\nepochs: 200\ninner:\n  scale: [0.14, 1.0]\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nepochs: 400\n")
    config = load(Outer, tmp_path / "child.yaml", ["inner.size=96", "clip=3.0"])
    assert (config.name, config.epochs, config.inner.scale, config.inner.size, config.clip) == (
        "swav",
        400,
        (0.14, 1.0),
        96,
        3.0,
    )
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load(Outer, tmp_path / "child.yaml", ["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(Outer, tmp_path / "nope.yaml")


def test_hash_is_stable_and_sensitive():
    a, b = from_dict(Outer, {}), from_dict(Outer, {})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(from_dict(Outer, {"epochs": 201}))
    assert to_dict(a)["inner"] == {"scale": [0.3, 1.0], "size": 128}
