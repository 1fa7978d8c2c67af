#!/usr/bin/env python3
"""Train the built-in `lstm-lm` checkpoint reproducibly (fixed seed, fixed data order).

    python scripts/train_lstm_lm.py [--steps 1200] [--out compressor/models/lstm_lm.safetensors]

The result ships in the package; the main job never trains.
"""

import argparse
from pathlib import Path

import torch

from compressor.models.lstm_lm import CHECKPOINT, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = train(args.out, steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr, seed=args.seed)
    print(f"wrote {args.out}: {meta['trained']}")


if __name__ == "__main__":
    main()
