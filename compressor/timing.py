"""Side-by-side timing: the one measurement every speed decision and benchmark uses.

The swap pass decides kernels with it, dynamic gating reports latencies with it, and the
benchmarks (``compress bench ...``) print it; it lives in the core so that passes need not
import the benchmark package.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

__all__ = ["time_interleaved"]


def time_interleaved(fns: dict[str, Callable[[int], object]], repeats: int = 20, warmup: int = 3) -> dict[str, dict]:
    """Time several callables side by side, interleaved round by round.

    Each callable takes the round index (use it to rotate among input or weight copies so that
    caches do not flatter the result). The order within a round is shuffled (seeded, so runs are
    repeatable): a call that runs right after a dense GEMM finds the caches flushed by its weight
    stream, and a fixed order would charge that to whichever callable comes next.
    Returns ``{name: {"median_s", "min_s", "runs", "samples_s"}}``; ``samples_s[r]`` is round ``r``'s
    time, so the callables' samples pair up round by round.
    """
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    names = list(fns)
    order_rng = random.Random(0)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order_rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name](r)
            samples[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "runs": len(s), "samples_s": list(s)}
        for name, s in samples.items()
    }
