#!/usr/bin/env python3
"""Train a built-in checkpoint reproducibly (fixed seed, fixed data order).

    python scripts/train_builtin.py lstm-lm        # 1000 steps, about 15 minutes on 2 cores
    python scripts/train_builtin.py char-encoder   # 2000 steps, about 20 minutes on 2 cores

The defaults are the settings of the shipped checkpoints (their metadata records them); options
override them (--steps, --batch, --seq-len, --lr, --seed, --threads, --out). Nothing at run or
test time trains.
"""

import argparse
import importlib
from pathlib import Path

import torch

# model name -> (module, steps, learning rate) of the shipped checkpoint
MODELS = {
    "lstm-lm": ("compressor.models.lstm_lm", 1000, 3e-3),
    "char-encoder": ("compressor.models.char_encoder", 2000, 1e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: the checkpoint shipped in the package")
    args = parser.parse_args()
    module_name, steps, lr = MODELS[args.model]
    module = importlib.import_module(module_name)
    out = args.out or module.CHECKPOINT
    torch.set_num_threads(args.threads)
    meta = module.train(out, steps=args.steps or steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr or lr,
                        seed=args.seed)
    print(f"wrote {out}: {meta['trained']}")


if __name__ == "__main__":
    main()
