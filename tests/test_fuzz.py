"""Fuzzing the loaders of untrusted files: recipes and artifacts.

Random mutations of valid files (a fixed seed and a fixed budget, so CI runs the same cases
every time): each must end, within a time bound and without a large allocation, in the
toolkit's own clean error (``CompressorError``, printed as one line by the CLI) or a valid
result. Any other exception, a hang or a memory blow-up fails the test with the case.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import signal
from pathlib import Path

import pytest

import compressor
from compressor.errors import CompressorError
from compressor.recipe import load_recipe
from artifact_tools import copy_artifact, make_builtin_artifact, read_metadata_raw, write_metadata_raw

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261207
#: values a mutation puts in place of a metadata field or a recipe token
ODD_VALUES = [None, -1, 0, 1, 2**62, 1e308, float("nan"), "", "os:system", "../../x", "x" * 300, [], {}, [1] * 50,
              {"kind": "factory", "ref": "os:system"}, True, "float32", [2, 3], {"shape": [1 << 40], "dtype": "int64"}]
YAML_TOKENS = ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "!!python/object/apply:os.system ['true']", "1e309", "-1",
               "99999999999999999999", "null", "'", '"', "\t", "<<: *a", "~", "\n  - pass: nm_prune\n", "block: [0, 4]",
               "sparsity: 1.5", "targets: ['re:(']", "\ufeff", "\\x00"]


@contextlib.contextmanager
def time_limit(seconds: float, case: str):
    """Fail the case if it runs longer than ``seconds`` (SIGALRM: the suite runs on Linux)."""
    def expire(signum, frame):
        raise TimeoutError(f"{case} ran past {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True) or [""]
    op = rng.randrange(5)
    if op == 0:  # a token inserted anywhere
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(YAML_TOKENS) + text[at:]
    if op == 1:  # a span deleted
        at = rng.randrange(len(text) + 1)
        return text[:at] + text[at + rng.randrange(1, 40):]
    if op == 2:  # a line duplicated (duplicate keys, repeated passes)
        i = rng.randrange(len(lines))
        return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if op == 3:  # a character replaced
        at = rng.randrange(max(1, len(text)))
        return text[:at] + chr(rng.choice([0x20, 0x3A, 0x2D, 0x5B, 0x7B, 0x26, 0x2A, 0x21, 0x7C, 0x3E, 0xE9])) + text[at + 1:]
    rng.shuffle(lines)  # lines reordered
    return "".join(lines)


def test_recipe_loader_fuzz(tmp_path):
    rng = random.Random(SEED)
    sources = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "recipes").glob("*.yaml"))]
    path = tmp_path / "mutated.yaml"
    peak = peak_rss_kib()
    outcomes = {"error": 0, "valid": 0}
    for case in range(300):
        text = sources[case % len(sources)]
        for _ in range(rng.randint(1, 4)):
            text = mutate_text(text, rng)
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            with time_limit(5, f"recipe case {case}"):
                load_recipe(path)
            outcomes["valid"] += 1
        except CompressorError:
            outcomes["error"] += 1
        except Exception as exc:
            pytest.fail(f"recipe case {case}: {type(exc).__name__}: {exc}\n--- mutated recipe ---\n{text[:3000]}")
    assert outcomes["error"] > 50 and outcomes["valid"] > 10, outcomes  # the mutations reach both outcomes
    assert peak_rss_kib() - peak < 1_000_000  # KiB


def _paths(value, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def mutate_metadata(meta: dict, rng: random.Random) -> dict:
    meta = json.loads(json.dumps(meta))
    for _ in range(rng.randint(1, 3)):
        path, value = rng.choice([p for p in _paths(meta) if p[0]])
        parent = meta
        for key in path[:-1]:
            parent = parent[key]
        op = rng.randrange(3)
        if op == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == 1 and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[path[-1]] = value * rng.choice([-1, 0, 1000, 10**9])
        else:
            parent[path[-1]] = rng.choice(ODD_VALUES)
    return meta


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    header_end = 8 + int.from_bytes(data[:8], "little")
    op = rng.randrange(4)
    if op == 3 and header_end < len(data):  # bytes flipped in the tensor data (packed indices, bitmasks, values)
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(header_end, len(out))] = rng.randrange(256)
        return bytes(out)
    if op == 0:  # truncated anywhere
        return data[: rng.randrange(len(data))]
    if op == 1:  # bytes flipped in the length field or the JSON header
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(min(header_end, len(out)))] = rng.randrange(256)
        return bytes(out)
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))  # trailing garbage


def test_artifact_loader_fuzz(tmp_path):
    rng = random.Random(SEED)
    good = make_builtin_artifact(tmp_path / "good")
    meta = read_metadata_raw(good)
    data = (good / "model.safetensors").read_bytes()
    peak = peak_rss_kib()
    outcomes = {"error": 0, "valid": 0}
    for case in range(120):
        art = copy_artifact(good, tmp_path, f"case{case}")
        if case % 3 == 2:
            (art / "model.safetensors").write_bytes(mutate_bytes(data, rng))
            what = "bytes"
        else:
            mutated = mutate_metadata(meta, rng)
            write_metadata_raw(art, mutated)
            what = json.dumps(mutated)[:2000]
        try:
            with time_limit(20, f"artifact case {case}"):
                compressor.read_metadata(art)
                compressor.load(art)
            outcomes["valid"] += 1
        except CompressorError:
            outcomes["error"] += 1
        except Exception as exc:
            pytest.fail(f"artifact case {case}: {type(exc).__name__}: {exc}\n--- mutated {what}")
        finally:
            import shutil

            shutil.rmtree(art)
    assert outcomes["error"] > 40 and outcomes["valid"] > 5, outcomes
    assert peak_rss_kib() - peak < 1_000_000  # KiB: no mutation allocated a model of its own choosing
