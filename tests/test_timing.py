"""compressor.timing: the interleaved timer every benchmark and the swap pass use."""

from __future__ import annotations

import pytest

from compressor.timing import time_interleaved


def test_warmup_reaches_every_copy_before_the_timed_rounds():
    calls: dict[str, list[int]] = {"a": [], "b": []}

    def fn(name):
        def call(i):
            calls[name].append(i)
        return call

    t = time_interleaved({n: fn(n) for n in calls}, repeats=5, warmup=2, copies=3)
    for name, seen in calls.items():
        warm, timed = seen[:-5], seen[-5:]
        # each of the 3 copies (index mod 3) was called twice before any timed call
        assert sorted(i % 3 for i in warm) == [0, 0, 1, 1, 2, 2]
        assert timed == [0, 1, 2, 3, 4]
        assert t[name]["runs"] == 5
    with pytest.raises(ValueError, match="copies"):
        time_interleaved({"a": fn("a")}, repeats=1, warmup=1, copies=0)
