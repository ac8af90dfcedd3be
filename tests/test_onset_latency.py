"""The README's onset figures come from benchmarks/onset_latency.py; check they hold."""

from benchmarks.onset_latency import measure


def test_causal_octaves_react_in_order_and_fast():
    r = measure("causal")
    top, mid, bot = r["top"]["ms_to_50pct"], r["middle"]["ms_to_50pct"], r["bottom"]["ms_to_50pct"]
    assert 0 < top < 6  # within a few ms
    assert top < mid < bot
    assert bot < 87 * 256 / 44100 * 1000  # the lowest octave still fits the 87-column window


def test_centered_columns_are_late_for_a_stream():
    r = measure("centered")
    for v in r.values():
        assert abs(v["ms_to_50pct"]) < 6  # centred on the onset ...
        assert v["available_ms"] > 250  # ... but a stream only has it ~257 ms later
