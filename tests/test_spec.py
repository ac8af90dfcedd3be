import dataclasses
import json

import pytest

from letsplay.models.spec import AudioSpec, SpecError, VideoSpec


def test_defaults_match_design():
    a = AudioSpec()
    assert (a.sample_rate, a.hop, a.n_bins, a.bins_per_octave, a.window_columns) == (44100, 256, 84, 12, 87)
    assert a.fmin == pytest.approx(32.70)
    assert a.alignment == "causal" and a.scaling == "magnitude"
    assert a.window_seconds == pytest.approx(87 * 256 / 44100)
    v = VideoSpec()
    assert (v.fps, v.height, v.width, v.lookahead_ms) == (30.0, 256, 256, 0.0)
    assert v.frame_time(30) == pytest.approx(1.0)


@pytest.mark.parametrize("cls", [AudioSpec, VideoSpec])
def test_json_round_trip_and_frozen(cls):
    s = cls()
    assert cls.from_json(s.to_json()) == s
    assert cls.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.fps = 1  # frozen


@pytest.mark.parametrize("kw,word", [
    (dict(sample_rate=0), "sample_rate"),
    (dict(hop=-1), "hop"),
    (dict(hop=True), "hop"),
    (dict(alignment="left"), "alignment"),
    (dict(scaling="db"), "scaling"),
    (dict(fmin=float("nan")), "fmin"),
    (dict(n_bins=120), "Nyquist"),
])
def test_audio_spec_rejects_bad_values(kw, word):
    with pytest.raises(SpecError, match=word):
        AudioSpec(**kw)


@pytest.mark.parametrize("kw,word", [(dict(fps=0), "fps"), (dict(height=4), "height"),
                                     (dict(lookahead_ms=-5), "lookahead")])
def test_video_spec_rejects_bad_values(kw, word):
    with pytest.raises(SpecError, match=word):
        VideoSpec(**kw)


def test_from_json_errors_say_what_is_wrong():
    with pytest.raises(SpecError, match="damaged"):
        AudioSpec.from_json("{not json")
    with pytest.raises(SpecError, match="unknown field"):
        AudioSpec.from_json(json.dumps({**AudioSpec().to_dict(), "bogus": 1}))
    with pytest.raises(SpecError, match="object"):
        VideoSpec.from_json("[1, 2]")
    # whole floats from other JSON writers are accepted for int fields
    assert AudioSpec.from_dict({"hop": 256.0}).hop == 256
