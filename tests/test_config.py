"""The one strict config mechanism (models/config.py) and every config class that uses it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from letsplay.export.quantize import Int8Options
from letsplay.models.config import ConfigError, DictConfig, config_from_dict
from letsplay.models.discriminator import DiscriminatorConfig
from letsplay.models.performer import PerformerConfig
from letsplay.models.presets import preset
from letsplay.models.spec import AudioSpec, SpecError, VideoSpec
from letsplay.models.train import TrainConfig
from letsplay.realtime.engine import EngineConfig

CONFIGS = [
    AudioSpec(hop=512, alignment="centered", scaling="log"),
    VideoSpec(fps=25.0, height=64, width=48, lookahead_ms=10.0),
    preset("tiny"),
    TrainConfig(stage="kp", steps=7, betas=(0.9, 0.99), vgg_weights="w.pth", max_clips=3),
    DiscriminatorConfig(layers=3, hidden=32),
    EngineConfig(realtime=False, pipeline=True),
    Int8Options(op_types=("Conv",), exclude=("a", "b")),
]


@dataclass(frozen=True)
class Needs(DictConfig):
    rate: int
    name: str = "x"


@dataclass(frozen=True)
class Inner:
    k: int = 1


@dataclass(frozen=True)
class Outer:  # plain dataclasses, no mixin
    inner: Inner = field(default_factory=Inner)
    tags: tuple[str, ...] = ()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_dict_and_json(cfg: DictConfig) -> None:
    cls = type(cfg)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able: no tuples, no dataclasses left
    assert cls.from_dict(d) == cfg
    assert cls.from_json(cfg.to_json()) == cfg
    assert cfg.to_json() == json.dumps(d, sort_keys=True)


def test_to_dict_turns_nested_configs_and_tuples_into_plain_json() -> None:
    d = TrainConfig().to_dict()
    assert d["betas"] == [0.5, 0.999] and isinstance(d["stage_fractions"], list)
    assert d["disc"] == DiscriminatorConfig(base_channels=16, max_channels=128, layers=5, audio_channels=32,
                                            audio_layers=3, audio_features=64, hidden=64).to_dict()
    assert Int8Options().to_dict()["op_types"] == ["Conv", "Gemm", "MatMul"]


def test_nested_configs_are_rebuilt_from_their_annotations() -> None:
    d = TrainConfig().to_dict()
    d["disc"]["layers"] = 2
    back = TrainConfig.from_dict(d)
    assert isinstance(back.disc, DiscriminatorConfig) and back.disc.layers == 2
    assert isinstance(back.betas, tuple) and isinstance(back.stage_fractions, tuple)
    p = PerformerConfig.from_dict(preset("tiny").to_dict())
    assert isinstance(p.audio, AudioSpec) and isinstance(p.video, VideoSpec)
    assert type(p.stu) is type(preset("tiny").stu)


@pytest.mark.parametrize("cls,err", [(TrainConfig, ConfigError), (EngineConfig, ConfigError),
                                     (Int8Options, ConfigError), (DiscriminatorConfig, ConfigError),
                                     (AudioSpec, SpecError), (PerformerConfig, ConfigError)])
def test_unknown_keys_are_named(cls: type[DictConfig], err: type[Exception]) -> None:
    with pytest.raises(err, match=rf"{cls.__name__}: unknown field\(s\) \['bogus', 'zz'\]"):
        cls.from_dict({**cls().to_dict(), "zz": 1, "bogus": 2})


def test_missing_keys_take_defaults_and_missing_required_keys_are_named() -> None:
    assert TrainConfig.from_dict({"steps": 5}) == TrainConfig(steps=5)

    assert Needs.from_dict({"rate": 3}) == Needs(3)
    with pytest.raises(ConfigError, match=r"Needs: required field\(s\) \['rate'\] missing"):
        Needs.from_dict({"name": "y"})


@pytest.mark.parametrize("cls,d,where", [
    (TrainConfig, {"steps": "10"}, "TrainConfig.steps"),  # no string -> number
    (TrainConfig, {"steps": True}, "TrainConfig.steps"),  # bool is not an int
    (TrainConfig, {"steps": 10.5}, "TrainConfig.steps"),  # no rounding
    (TrainConfig, {"lr": "0.1"}, "TrainConfig.lr"),
    (TrainConfig, {"lr": False}, "TrainConfig.lr"),
    (TrainConfig, {"amp": 1}, "TrainConfig.amp"),  # bool only from true/false
    (TrainConfig, {"vgg_weights": 3}, "TrainConfig.vgg_weights"),  # no number -> string
    (TrainConfig, {"betas": [0.5]}, "TrainConfig.betas"),  # fixed-length tuple
    (TrainConfig, {"betas": 0.5}, "TrainConfig.betas"),
    (TrainConfig, {"disc": {"layers": "5"}}, "TrainConfig.disc.layers"),  # path into nested configs
    (TrainConfig, {"disc": [1]}, "TrainConfig.disc"),
    (EngineConfig, {"pipeline": "yes"}, "EngineConfig.pipeline"),
    (Int8Options, {"op_types": ["Conv", 3]}, r"Int8Options.op_types\[1\]"),
])
def test_wrong_types_are_errors_naming_the_field(cls: type[DictConfig], d: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        cls.from_dict(d)


def test_numbers_follow_one_rule() -> None:
    t = TrainConfig.from_dict({"lr": 1, "steps": 12.0})  # int for float; whole float for int
    assert t.lr == 1.0 and isinstance(t.lr, float)
    assert t.steps == 12 and isinstance(t.steps, int)
    assert AudioSpec.from_dict({"fmin": 33}).fmin == 33.0 and isinstance(AudioSpec.from_dict({"fmin": 33}).fmin, float)
    assert TrainConfig.from_dict({"max_clips": None}).max_clips is None


def test_specs_raise_spec_errors_and_keep_their_checks() -> None:
    with pytest.raises(SpecError, match="AudioSpec.hop"):
        AudioSpec.from_dict({"hop": "256"})
    with pytest.raises(SpecError, match="alignment"):
        AudioSpec.from_dict({"alignment": "left"})
    with pytest.raises(SpecError, match="VideoSpec.height must be an int >= 8"):
        VideoSpec.from_dict({"height": 4})  # __post_init__ still runs, its message unchanged
    with pytest.raises(SpecError, match="object"):
        AudioSpec.from_json("3")


def test_post_init_errors_become_the_class_error_type() -> None:
    with pytest.raises(ConfigError, match="TrainConfig: unknown stage 'fly'"):
        TrainConfig.from_dict({"stage": "fly"})
    d = preset("tiny").to_dict()
    d["audio"]["hop"] = 0
    with pytest.raises(ConfigError, match="PerformerConfig.audio: AudioSpec.hop must be a positive int"):
        PerformerConfig.from_dict(d)
    with pytest.raises(ConfigError, match="damaged"):
        PerformerConfig.from_json("{oops")


def test_config_from_dict_works_without_the_mixin() -> None:
    assert config_from_dict(Outer, {"inner": {"k": 4}, "tags": ["a"]}) == Outer(Inner(4), ("a",))
    with pytest.raises(ConfigError, match=r"Outer.inner: unknown field\(s\) \['j'\]"):
        config_from_dict(Outer, {"inner": {"j": 4}})
