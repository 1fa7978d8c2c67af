#!/usr/bin/env python3
"""How large is the LM loss gradient on each LSTM matrix, next to a group-lasso term's?

    python scripts/lm_gradient_scale.py [--weights bench-results/models/7200/dense.pt] [--batches 4]

An experiment behind the group-lasso rows of BENCHMARKS.md, not part of the toolkit. It prints
the RMS of the cross-entropy gradient of every LSTM weight of the shipped ``lstm-lm`` (and of
``--weights``, e.g. a dense model trained on the corpus) over a few Shakespeare batches. The
term ``lambda * sum of block L2 norms`` has a gradient of RMS ``lambda / sqrt(bh * bw)`` per
weight (each block's unit vector spread over its entries), so the ratio tells whether a given
lambda is a nudge or a force. Under Adam the update follows the ratio, not the lambda.
"""

import argparse

import torch

from compressor import load_model
from compressor.tasks import LMTask, TaskConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a state dict of lstm-lm to measure besides the shipped one")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--block", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_model("lstm-lm")
    task = LMTask(TaskConfig(corpus="shakespeare", eval_tokens=0), getattr(spec, "vocab", None))
    per_weight = 1.0 / args.block  # lasso gradient RMS per unit lambda, square blocks
    runs = [("shipped", spec.model)] + ([("weights", load_model("lstm-lm", args.weights).model)] if args.weights else [])
    for label, model in runs:
        sums: dict[str, float] = {}
        for step in range(args.batches):
            model.zero_grad()
            task.loss(model, task.batch(step)).backward()
            for name, p in model.named_parameters():
                if name.startswith("rnn.weight_"):
                    sums[name] = sums.get(name, 0.0) + p.grad.pow(2).mean().sqrt().item() / args.batches
        for name, rms in sums.items():
            print(f"{label:8s} {name:18s} LM gradient RMS {rms:.2e}; lasso 1e-4 gives {1e-4 * per_weight:.2e} "
                  f"({1e-4 * per_weight / rms:.1%})")


if __name__ == "__main__":
    main()
