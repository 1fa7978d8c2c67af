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

__all__ = ["time_interleaved", "paired_ratio", "SelfTimed"]


class SelfTimed(float):
    """Seconds a callable measured itself, returned to :func:`time_interleaved` in place of the wall
    time of the call: work timed where it runs (an engine in a worker process, whose round trip
    through a pipe is not part of the engine's time)."""


def time_interleaved(fns: dict[str, Callable[[int], object]], repeats: int = 20, warmup: int = 3,
                     copies: int = 1) -> dict[str, dict]:
    """Time several callables side by side, interleaved round by round.

    Each callable takes the round index (use it to rotate among input or weight copies so that
    caches do not flatter the result). The order within a round is shuffled (seeded, so runs are
    repeatable): a call that runs right after a dense GEMM finds the caches flushed by its weight
    stream, and a fixed order would charge that to whichever callable comes next.
    ``warmup`` untimed calls go to each of the ``copies`` that the callables rotate among (round
    index modulo ``copies``), so no timed call is a copy's first: a fresh ONNX Runtime session
    runs its first two calls up to 5x slower (its arena grows to the graph's intermediates), and
    with only the first copies warmed, a 4-copy benchmark once put half its samples on cold
    sessions and reported 0.80x for a graph that runs 2.2x faster than dense once warm.
    Returns ``{name: {"median_s", "min_s", "runs", "samples_s"}}``; ``samples_s[r]`` is round ``r``'s
    time, so the callables' samples pair up round by round. A callable that returns a
    :class:`SelfTimed` has that figure recorded instead of its wall time.
    """
    if copies < 1:
        raise ValueError(f"copies must be 1 or more, got {copies}")
    for i in range(warmup * copies):
        for fn in fns.values():
            fn(i)
    names = list(fns)
    order_rng = random.Random(0)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order_rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            result = fns[name](r)
            elapsed = time.perf_counter() - t0
            samples[name].append(float(result) if isinstance(result, SelfTimed) else elapsed)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "runs": len(s), "samples_s": list(s)}
        for name, s in samples.items()
    }


def paired_ratio(reference_s, other_s, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """How much faster ``other`` is than ``reference`` from paired timings (``reference_s[r]`` and
    ``other_s[r]`` were measured in the same round of :func:`time_interleaved`).

    ``speedup``: the median of the per-round ratios ``reference / other`` (pairing cancels load that
    drifts between rounds); ``[low, high]``: a seeded percentile bootstrap ``confidence`` interval of
    that median; ``iqr``: the ratios' interquartile range; ``repeats``: rounds."""
    if len(reference_s) != len(other_s) or not reference_s:
        raise ValueError(f"need paired timings, got {len(reference_s)} and {len(other_s)}")
    ratios = sorted(d / s for d, s in zip(reference_s, other_s))
    n = len(ratios)
    rng = random.Random(seed)
    medians = sorted(_quantile(sorted(rng.choices(ratios, k=n)), 0.5) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return {"speedup": _quantile(ratios, 0.5), "low": _quantile(medians, alpha), "high": _quantile(medians, 1 - alpha),
            "iqr": _quantile(ratios, 0.75) - _quantile(ratios, 0.25), "repeats": n, "confidence": confidence}


def _quantile(xs, q: float) -> float:
    """Linear interpolation on sorted ``xs`` (numpy's default)."""
    pos = q * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)
