#!/usr/bin/env python3
"""Train the built-in `char-encoder` checkpoint reproducibly (fixed seed, fixed data order).

    python scripts/train_char_encoder.py [--steps 2000] [--out compressor/models/char_encoder.safetensors]

The result ships in the package; nothing at run or test time trains it.
"""

import argparse
from pathlib import Path

import torch

from compressor.models.char_encoder import CHECKPOINT, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = train(args.out, steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr, seed=args.seed)
    print(f"wrote {args.out}: {meta['trained']}")


if __name__ == "__main__":
    main()
