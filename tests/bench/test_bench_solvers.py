"""Smoke test of ``compress bench solvers`` on tiny sizes (the benchmark itself is not a test)."""

from __future__ import annotations

import argparse
import json

import pytest

from compressor.bench import solvers as bench
from compressor.solvers import cyclecancel


def test_bench_runs_and_writes_json(tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "solvers.json"
    args = parser.parse_args(["--sizes", "32", "--m", "4", "8", "--reference-tiles", "3", "--repeats", "1", "--json", str(out)])
    monkeypatch.setattr(bench, "DEFAULT_WEIGHTS", tmp_path / "missing.safetensors")
    assert bench.run(args) == 0
    data = json.loads(out.read_text())
    solvers = {(r["m"], r["solver"]) for r in data["results"]}
    assert (4, "enumerate") in solvers and (8, "mincostflow") in solvers and (8, "networkx per tile (ref)") in solvers
    if cyclecancel.available():
        assert (8, "cyclecancel") in solvers
        kept = {r["solver"]: r["kept_ratio"] for r in data["results"] if r["m"] == 8 and "kept_ratio" in r}
        assert kept["cyclecancel"] == pytest.approx(1.0) and kept["mincostflow"] == pytest.approx(1.0, rel=1e-6)
    assert all(r.get("feasible", True) for r in data["results"])
    assert "skipped that part" in capsys.readouterr().out
