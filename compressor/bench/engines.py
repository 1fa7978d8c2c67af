"""Other engines beside ours in the benchmarks: scipy BSR, MKL sparse (``sparse_dot_mkl``), DeepSparse.

Each is an optional row: it appears where the engine runs here; otherwise the benchmark prints one
line saying why (:func:`mkl_unavailable_reason`, :func:`deepsparse_interpreter`) and goes on.

* :func:`scipy_bsr_linear` -- ``y = x W^T + b`` with ``scipy.sparse.bsr_array`` (scipy is a
  dependency: this row is always there). scipy's sparse products are single-threaded C++.
* :func:`mkl_bsr_linear` -- the same product through MKL's sparse BLAS (inspector-executor
  ``mkl_sparse_s_mm`` on a BSR handle) via ``sparse_dot_mkl``, which builds the handle on every
  call, as its users get it. Install ``pip install -e '.[engines]'`` (the ``mkl`` wheel brings
  ``libmkl_rt``; :func:`mkl_unavailable_reason` points ``sparse_dot_mkl`` at it).
* :class:`DeepSparseWorker` -- DeepSparse 1.8.0 (end of life) on the zero-filled dense ONNX of a
  model (:func:`deepsparse_onnx`), in a worker process (:mod:`.deepsparse_worker`) run by the
  interpreter that has ``deepsparse``: this one when it imports here, or the one named by
  ``compress bench model --deepsparse-python PATH`` (DeepSparse pins ``onnx<1.15``, which cannot
  share our environment; README). The worker times each call itself and hands back
  :class:`~compressor.timing.SelfTimed` seconds, so the pipe's round trip is not charged.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compressor.errors import CompressorError
from compressor.timing import SelfTimed

__all__ = ["scipy_bsr_linear", "mkl_unavailable_reason", "mkl_bsr_linear", "deepsparse_interpreter",
           "deepsparse_onnx", "DeepSparseWorker", "DEEPSPARSE_OPSET"]

#: DeepSparse 1.8.0 embeds an ONNX Runtime that reads IR version <= 9 and has no kernels for some
#: opset-19+ ops (Reshape-19): graphs are converted down to this opset (IR version 8) first.
DEEPSPARSE_OPSET = 18


# -- single layers -----------------------------------------------------------------------------

def _padded_bsr(weight: np.ndarray, block: int):
    """``weight`` (out, in) zero-padded to whole blocks, as a scipy BSR array of ``block`` blocks
    (blocks holding only zeros are not stored)."""
    import scipy.sparse as sp

    out, inp = weight.shape
    rows, cols = -(-out // block) * block, -(-inp // block) * block
    padded = np.zeros((rows, cols), dtype=weight.dtype)
    padded[:out, :inp] = weight
    return sp.bsr_array(padded, blocksize=(block, block))


def _padded_input(x: np.ndarray, cols: int) -> np.ndarray:
    if x.shape[1] == cols:
        return x
    out = np.zeros((x.shape[0], cols), dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def scipy_bsr_linear(weight: np.ndarray, bias: np.ndarray | None, block: int
                     ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(prepare, linear)``: ``linear(prepare(x))`` is ``x @ weight.T + bias`` for ``x`` (batch, in),
    computed as ``W_bsr @ x.T`` by ``scipy.sparse.bsr_array`` with square ``block`` blocks.

    ``prepare`` zero-pads ``x`` to whole blocks when ``in`` is not a multiple of ``block`` (done
    once per input, outside the timed call); ``weight`` keeps its zeros out of the stored blocks."""
    w = _padded_bsr(weight, block)
    out = weight.shape[0]
    b = None if bias is None else bias.astype(weight.dtype)

    def linear(x: np.ndarray) -> np.ndarray:
        y = (w @ x.T)[:out].T
        return y if b is None else y + b

    return (lambda x: _padded_input(x, w.shape[1])), linear


def mkl_unavailable_reason() -> str | None:
    """None when ``sparse_dot_mkl`` imports and loads MKL's runtime; else one line saying why."""
    if importlib.util.find_spec("sparse_dot_mkl") is None:
        return "sparse_dot_mkl is not installed (pip install -e '.[engines]')"
    if "MKL_RT" not in os.environ:
        # The mkl wheel puts libmkl_rt.so.N in the environment's lib/, which is not on the loader's
        # path and which sparse_dot_mkl does not search; MKL_RT is the variable it reads.
        found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
        if found:
            os.environ["MKL_RT"] = found[-1]
    try:
        import sparse_dot_mkl  # noqa: F401
    except (ImportError, OSError) as e:
        return f"sparse_dot_mkl cannot load MKL's runtime: {str(e).splitlines()[0][:200]}"
    return None


def mkl_bsr_linear(weight: np.ndarray, bias: np.ndarray | None, block: int, threads: int
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Like :func:`scipy_bsr_linear`, the product through ``sparse_dot_mkl.dot_product_mkl`` (MKL on
    ``threads`` threads). Call :func:`mkl_unavailable_reason` first."""
    import sparse_dot_mkl

    sparse_dot_mkl.mkl_set_num_threads(threads)
    w = _padded_bsr(weight, block)
    out = weight.shape[0]
    b = None if bias is None else bias.astype(weight.dtype)

    def linear(x: np.ndarray) -> np.ndarray:
        y = sparse_dot_mkl.dot_product_mkl(w, x.T)[:out].T
        return y if b is None else y + b

    return (lambda x: _padded_input(x, w.shape[1])), linear


# -- whole models: DeepSparse ------------------------------------------------------------------

def _has_deepsparse(python: str) -> bool:
    """Whether ``python`` (run with this process's environment, as the worker will be) imports deepsparse."""
    probe = subprocess.run([python, "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('deepsparse') is None)"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def deepsparse_interpreter(python: str | None) -> tuple[str | None, str]:
    """The interpreter to run DeepSparse with, and a line saying which or why none.

    ``python`` (``--deepsparse-python``): that interpreter, which must have ``deepsparse``
    (:class:`CompressorError` otherwise: the flag asked for the row). None: this interpreter when
    ``deepsparse`` imports here, else no row."""
    if python is not None:
        path = Path(python)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise CompressorError(f"--deepsparse-python {python}: not an executable file")
        if not _has_deepsparse(str(path)):
            raise CompressorError(f"--deepsparse-python {python}: that interpreter cannot import deepsparse "
                                  f"(install deepsparse==1.8.0 into its environment; README)")
        return str(path), f"DeepSparse through {python}"
    if importlib.util.find_spec("deepsparse") is not None:
        return sys.executable, "DeepSparse from this environment"
    return None, ("DeepSparse row not run: deepsparse is not installed here (it pins onnx<1.15: install it in a "
                  "separate venv and pass --deepsparse-python PATH; README)")


def deepsparse_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write ``src`` (an export of :func:`compressor.export.export_model`) as DeepSparse 1.8.0 reads it:
    pruned weights as plain zero-filled initializers (DeepSparse finds the zeros in them; the
    bitmask storage of :mod:`compressor.onnx_compact` is undone), constant subgraphs folded by ONNX
    Runtime's basic (standard-ops-only) optimisations, opset :data:`DEEPSPARSE_OPSET`, IR version 8.
    The folding matters: ONNX's version converter has no down-conversion for some opset-20 ops
    (``ConstantOfShape``), which the exporter emits for constant initial states."""
    import onnx
    import onnxruntime as ort
    from onnx import version_converter

    from compressor.onnx_compact import expand_initializers

    model = onnx.load(str(src))
    expand_initializers(model)
    expanded = Path(dst).with_suffix(".expanded.onnx")
    onnx.save(model, str(expanded))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)  # the folded graph
    ort.InferenceSession(str(expanded), opts, providers=["CPUExecutionProvider"])
    expanded.unlink()
    model = onnx.load(str(dst))
    # ORT lists every domain it knows (com.microsoft, ...) with versions DeepSparse's ORT rejects
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > DEEPSPARSE_OPSET:
        model = version_converter.convert_version(model, DEEPSPARSE_OPSET)
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


class DeepSparseWorker:
    """A ``deepsparse.Engine`` on ``onnx_path`` in a worker process run by ``python``.

    ``inputs``: the copies of the model's inputs (each a list of arrays in the graph's input
    order), sent once; :meth:`run` runs copy ``i`` and returns the engine's own time
    (:class:`~compressor.timing.SelfTimed`); :attr:`outputs` holds each copy's outputs from the
    first run (to check against ONNX Runtime). ``threads``: DeepSparse's ``num_cores``.
    Raises ``RuntimeError`` with the worker's last error line when the engine cannot be built."""

    def __init__(self, python: str, onnx_path: str | os.PathLike, inputs: Sequence[Sequence[np.ndarray]],
                 threads: int, workdir: str | os.PathLike):
        workdir = Path(workdir)
        feeds = workdir / "deepsparse_inputs.npz"
        np.savez(feeds, **{f"c{c}_{k}": a for c, arrays in enumerate(inputs) for k, a in enumerate(arrays)})
        result = workdir / "deepsparse_outputs.npz"
        batch = int(inputs[0][0].shape[0])
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty engine cannot block on it
        env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}  # no usage reports from sparsezoo
        worker = Path(__file__).with_name("deepsparse_worker.py")
        self._proc = subprocess.Popen(
            [python, str(worker), str(onnx_path), str(feeds), str(result), str(batch), str(threads), str(len(inputs))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        reply = self._reply()
        if "error" in reply:
            self.close()
            raise RuntimeError(reply["error"])
        self.engine = reply.get("engine", "")
        with np.load(result, allow_pickle=False) as data:
            self.outputs = [[data[f"c{c}_{k}"] for k in range(reply["n_outputs"])] for c in range(len(inputs))]
        self._copies = len(inputs)

    def _reply(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=60)
            self._stderr.seek(0)
            tail = [s for s in self._stderr.read().decode(errors="replace").splitlines() if s.strip()]
            return {"error": f"the DeepSparse worker exited ({self._proc.returncode}): "
                             f"{tail[-1][:300] if tail else 'no message'}"}
        return json.loads(line)

    def run(self, i: int) -> SelfTimed:
        """Run input copy ``i % copies``; the engine's time for that call, measured in the worker."""
        self._proc.stdin.write(f"{i % self._copies}\n")
        self._proc.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return SelfTimed(reply["s"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()

    def __enter__(self) -> "DeepSparseWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
