"""The trained built-in ``char-encoder`` and its masked-character task."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

import compressor
from compressor.corpus import pydoc_text, split_text
from compressor.models.char_encoder import MASK_FRACTION, masked_lm_task, masked_perplexity
from compressor.tasks import TaskConfig

TASK = "compressor.models.char_encoder:masked_lm_task"


def test_shipped_checkpoint_beats_unigram_statistics():
    """An untrained model cannot beat the unigram perplexity of the text it is scored on; the
    shipped one must, by far (it reads the characters around each masked position)."""
    spec = compressor.load_model("char-encoder")
    text = split_text(pydoc_text()).test[:8192]
    ids = spec.vocab.encode(text)
    counts = Counter(ids.tolist())
    unigram = math.exp(-sum(c * math.log(c / len(ids)) for c in counts.values()) / len(ids))
    ppl = masked_perplexity(spec.model, ids, spec.model.mask_id, seq_len=128)
    assert ppl < 0.5 * unigram, (ppl, unigram)


def test_masked_lm_task_batches_and_loss():
    spec = compressor.load_model("char-encoder")
    task = masked_lm_task(TaskConfig(name=TASK, batch_size=8, seq_len=64), spec, None)
    inputs, target, where = task.batch(3)
    again = task.batch(3)
    assert all(torch.equal(a, b) for a, b in zip((inputs, target, where), again))  # pure function of the step
    assert not torch.equal(task.batch(4)[2], where)
    assert inputs.shape == target.shape == (8, 64)
    assert torch.equal(inputs[where], torch.full_like(inputs[where], spec.model.mask_id))
    assert torch.equal(inputs[~where], target[~where])
    assert abs(where.float().mean().item() - MASK_FRACTION) < 0.06
    logits = spec.model(inputs)
    manual = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0][where].mean()
    torch.testing.assert_close(task.loss(spec.model, (inputs, target, where)), manual)
    assert task.inputs((inputs, target, where)) == (inputs,)


def test_nm_convert_with_masked_calibration_and_reload(tmp_path):
    """nm_convert on the encoder's FFN with masked-text calibration: the masks are 2:4, the
    reconstruction lowers the layer error, and the artifact reloads to the same outputs."""
    import io

    from rich.console import Console

    from compressor import Pipeline
    from compressor.recipe import parse_recipe

    spec = compressor.load_model("char-encoder")
    recipe = parse_recipe({"version": 1, "passes": [{
        "pass": "nm_convert", "targets": ["body.blocks.0.fc1", "body.blocks.0.fc2"], "n": 2, "m": 4,
        "reconstruct": "lstsq", "rows": 512, "calibration": {"name": TASK, "batch_size": 8, "seq_len": 64}}]})
    out = tmp_path / "art"
    result = Pipeline(recipe).run(spec, out=out, console=Console(file=io.StringIO()))
    metrics = result.report.passes[0]["metrics"]
    assert set(metrics) == {"body.blocks.0.fc1.weight", "body.blocks.0.fc2.weight"}
    for v in metrics.values():
        assert v["reconstruction_error_after"] < v["reconstruction_error_before"]
    w = result.model.body.blocks[0].fc1.weight.detach()
    assert bool(((w != 0).view(w.shape[0], -1, 4).sum(-1) <= 2).all())
    reloaded = compressor.load(out)
    x = torch.randint(0, spec.model.mask_id + 1, (2, 32))
    torch.testing.assert_close(reloaded(x), result.model(x))
    assert F.softmax(reloaded(x), -1).shape == (2, 32, spec.model.mask_id)
