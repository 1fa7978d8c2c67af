"""Real processes: a run killed with SIGKILL resumes to the same result; torchrun with 2 ranks
matches 1 process with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import compressor
from fixture_models import load_trusted  # tests/fixture_models.py: passes the suite's own factory

ROOT = Path(__file__).resolve().parents[1]


def recipe_file(tmp_path, corpus, steps, checkpoint_every=0, batch=8, seq_len=32, name="r.yaml"):
    path = tmp_path / name
    path.write_text(f"""
version: 1
passes:
  - pass: gradual_block_prune
    targets: [rnn]
    block: [4, 4]
    sparsity: 0.75
    end: {steps // 2}
    freq: 3
    train:
      steps: {steps}
      lr: 0.003
      eval_every: 0
      checkpoint_every: {checkpoint_every}
      task: {{name: lm, corpus: {corpus}, batch_size: {batch}, seq_len: {seq_len}}}
""")
    return path


def corpus_file(tmp_path):
    gen = torch.Generator().manual_seed(3)
    alphabet = "abcdefghijklmnopqrstuvwxyz .\n"
    path = tmp_path / "corpus.txt"
    path.write_text("".join(alphabet[i] for i in torch.randint(0, len(alphabet), (20000,), generator=gen).tolist()))
    return path


def fixture_ref():
    return f"{ROOT / 'tests' / 'fixture_models.py'}:lstm_lm"


def cmd(*args):
    return [sys.executable, "-m", "compressor", *map(str, args)]


def assert_same_artifacts(a, b, rtol=1e-5, atol=1e-6):
    ma, mb = compressor.load_masks(a), compressor.load_masks(b)
    assert ma.keys() == mb.keys()
    for name in ma:
        assert torch.equal(ma[name], mb[name]), f"mask {name} differs"
    sa, sb = load_trusted(a).state_dict(), load_trusted(b).state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=atol)


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    from compressor.cli import main

    corpus = corpus_file(tmp_path)
    recipe = recipe_file(tmp_path, corpus, steps=100, checkpoint_every=5, batch=16, seq_len=64)
    model = fixture_ref()
    # the uninterrupted reference runs in-process (the kill and the resume are the real processes)
    assert main([str(a) for a in ("--recipe", recipe, "--model", model, "--out", tmp_path / "ref")]) == 0, \
        capsys.readouterr().err

    out = tmp_path / "run"
    work = tmp_path / ".run.work"
    proc = subprocess.Popen(cmd("--recipe", recipe, "--model", model, "--out", out),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (work / "checkpoint.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.1)  # mid-step, well before the end: 95 steps remain
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written
    step = torch.load(work / "checkpoint.pt", weights_only=True)["step"]
    assert step is not None and 0 < step < 100, step

    # a different recipe must not resume from this checkpoint, and must not destroy it (in-process too)
    other = recipe_file(tmp_path, corpus, steps=24, checkpoint_every=5, batch=16, seq_len=64, name="other.yaml")
    capsys.readouterr()
    assert main([str(a) for a in ("--recipe", other, "--model", model, "--out", out, "--resume")]) == 2
    assert "different recipe, model" in capsys.readouterr().err
    # starting over without --resume is refused while the checkpoint exists
    assert main([str(a) for a in ("--recipe", recipe, "--model", model, "--out", out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (work / "checkpoint.pt").exists()

    resumed = subprocess.run(cmd("--recipe", recipe, "--model", model, "--out", out, "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert not work.exists()
    assert_same_artifacts(out, tmp_path / "ref")


def test_torchrun_two_processes_match_one(tmp_path, capsys):
    from compressor.cli import main

    corpus = corpus_file(tmp_path)
    recipe = recipe_file(tmp_path, corpus, steps=30, batch=8)
    model = fixture_ref()
    # one process: this one; the two ranks below are real processes under torchrun
    assert main([str(a) for a in ("--recipe", recipe, "--model", model, "--out", tmp_path / "one")]) == 0, \
        capsys.readouterr().err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "compressor",
         "--recipe", str(recipe), "--model", model, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert (tmp_path / "two" / "model.safetensors").exists()
    # gradients are averaged over two half batches: equal to the full batch up to float rounding
    assert_same_artifacts(tmp_path / "one", tmp_path / "two", rtol=1e-4, atol=1e-5)
