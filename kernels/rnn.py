"""Sparse recurrent layers: ``SparseLSTM`` and ``SparseGRU``, drop-ins for ``nn.LSTM`` / ``nn.GRU``.

Narang et al., "Block-Sparse Recurrent Neural Networks" (arXiv 1711.02782): the input and
recurrent weights of every layer and direction are block sparse. Each weight becomes a
:class:`~compressor.kernels.modules.BlockSparseLinear` (or stays a dense ``nn.Linear`` when no
mask is given for it). The input projection ``W_ih x + b_ih`` runs once for the whole sequence
(a large-batch product), the recurrent product ``W_hh h + b_hh`` once per time step; gate math
follows the PyTorch documentation of ``nn.LSTM`` / ``nn.GRU`` (gate order i, f, g, o and r, z, n;
GRU's ``b_hn`` inside ``r * (W_hn h + b_hn)``), so with nothing pruned the results equal
``nn.LSTM`` / ``nn.GRU`` up to float rounding.

Exported (``torch.onnx.export``), the time loop is one ``scan`` per layer and direction, an ONNX
``Scan`` whose body is one step. Full sequences at inference on CPU run each layer's and
direction's whole time loop in one compiled call (:func:`compressor.kernels.native.rnn_layer`) where the recurrent weight is a
:class:`BlockSparseLinear`: stepping from Python costs about a dozen op dispatches per step, which
made the sparse LSTM slower over a sequence than ``nn.LSTM``'s one fused call per layer. The
per-step torch path stays the reference, the training path (autograd) and the fallback (no C
compiler, ``COMPRESSOR_NATIVE=0``, hooks, tracing).

``forward(input, hx)`` has ``nn.LSTM``'s signature and shapes (batch_first, bidirectional,
multi-layer, unbatched input, inter-layer dropout in training mode). ``step(x_t, state)`` is the
streaming API for unidirectional models: one time step through all layers,
``x_t (B, input_size) -> y_t (B, hidden_size)``. ``step_module()`` wraps it as an
``nn.Module`` with tensor-only inputs/outputs for ONNX export. ``proj_size`` is not supported.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from . import native
from .block_ops import DENSE_BATCH, balanced_block_linear, bsr_linear
from .modules import BlockSparseLinear

__all__ = ["SparseLSTM", "SparseGRU", "RNNStep", "PRODUCT_ORDERS"]


def _global_hooks() -> bool:
    m = torch.nn.modules.module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks)


def _native_module(mod: nn.Module) -> bool:
    """Whether the native kernels may stand in for ``mod``: a plain :class:`BlockSparseLinear` not
    asked to run Triton, with no hooks (the kernels do not call the module)."""
    return type(mod) is BlockSparseLinear and mod.backend != "triton" and not mod._forward_hooks \
        and not mod._forward_pre_hooks and not _global_hooks()


def _native_index(mod: BlockSparseLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values (nnzb, bw, bh), crow, cols)``: ``mod``'s weight as the BSR with transposed blocks
    that the native kernels take (a balanced layout is a BSR with ``k`` blocks per row). The index
    is built and checked once (:func:`native.check_bsr_index`) and cached on the module, rebuilt
    when its index buffers change (replaced, moved, written in place): per call the check cost a
    tenth of a streaming step."""
    bh, bw = mod.block
    pattern = (mod.col_idx,) if mod.layout == "balanced" else (mod.crow_indices, mod.col_indices)
    key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, tuple(t.shape)) for t in pattern)
    cache = mod.__dict__.get("_native_index_cache")
    if cache is None or cache[0] != key:
        if mod.layout == "balanced":
            R, k = mod.col_idx.shape
            crow, cols = torch.arange(R + 1, dtype=torch.int64) * k, mod.col_idx.reshape(-1)
        else:
            crow, cols = mod.crow_indices, mod.col_indices
        crow, cols = native.check_bsr_index(crow, cols, -(-mod.in_features // bw), cols.numel())
        cache = (key, crow, cols)
        mod.__dict__["_native_index_cache"] = cache  # plain attribute: no nn.Module bookkeeping
    return mod._parameters["values"].reshape(cache[2].numel(), bw, bh), cache[1], cache[2]


#: From ``DENSE_BATCH`` rows on, an input projection storing at least this fraction of its weight
#: stays on the torch op (which then runs one dense GEMM). Measured at 2048 rows, 4096 x 1024,
#: 32x32 blocks, quiet 2-core machine, since the native product's six-example slices: native 101 /
#: 113 / 128 ms against torch 222 / 216 / 217 ms at 25% / 37.5% / 50% stored with one thread, 103 /
#: 116 / 117 against 119 / 117 / 116 ms with two (the GEMM scales with threads, the native product
#: runs on one): from half stored on, the GEMM (which more cores speed up).
NATIVE_MAX_DENSITY = 0.5


def _native_input_projection(ih: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``ih(x)`` (``x (..., in)``) in one native call, or None where the kernels cannot run it.

    Used for a streaming step and for a whole sequence's input projection: the torch op gathers
    and copies ``x``'s block columns for every block row before its batched matmul, which at
    16 x 128 rows took 475 ms against 168 ms native for a 4096 x 1024 weight at 90% (one thread,
    loaded machine), and 8.2 against 2.2 ms at 128 rows; at 75% (where the torch op runs one dense
    GEMM from 128 rows on) 436 against 371 ms at 2048 rows."""
    if not _native_module(ih) or x.dim() < 1 or x.shape[-1] != ih.in_features:
        return None
    p = ih._parameters
    tensors = [t for t in (p["values"], p.get("bias")) if t is not None]
    if not native.native_eligible(x, *tensors):
        return None
    rows = x.numel() // max(1, ih.in_features)
    bh, bw = ih.block
    density = p["values"].numel() / max(1, -(-ih.out_features // bh) * bh * -(-ih.in_features // bw) * bw)
    if rows >= DENSE_BATCH and density >= NATIVE_MAX_DENSITY:
        return None  # the torch op's dense GEMM (threaded) wins here
    y = native.block_linear(x.reshape(-1, ih.in_features), *_native_index(ih), p.get("bias"), ih.in_features,
                            ih.out_features, index_checked=True)
    return y.reshape(*x.shape[:-1], ih.out_features)


#: Each module's streaming-step plan, ``(key, (plan, dense_input) or None)``, beside the module rather
#: than in it: a plan holds C function pointers, which ``copy.deepcopy`` and pickling cannot take,
#: and a copy of the module must not point into the original's tensors anyway.
_STEP_PLANS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _tensor_key(t: torch.Tensor | None) -> tuple | None:
    """What identifies a tensor's contents for a cache of pointers into it: address, version
    (bumped by in-place writes; inference tensors have none), shape and dtype."""
    if t is None:
        return None
    return (t.data_ptr(), -1 if t.is_inference() else t._version, tuple(t.shape), t.dtype)


def _product(mod: nn.Module, x: torch.Tensor, bias: torch.Tensor | None, weights_left: bool = False) -> torch.Tensor:
    """``mod``'s product of ``x`` with ``bias`` in place of its own (None: no bias), for the module
    types a recurrent layer's projections have (:func:`_rebiasable`); ``weights_left`` as
    :func:`balanced_block_linear`'s (balanced blocks only)."""
    if type(mod) is nn.Linear:
        return F.linear(x, mod.weight, bias)
    if mod.layout == "balanced":
        return balanced_block_linear(x, mod.values, mod.col_idx, bias, mod.in_features, mod.out_features,
                                     weights_left=weights_left)
    return bsr_linear(x, mod.values, mod.crow_indices, mod.col_indices, mod.row_indices, bias, mod.in_features,
                      mod.out_features)


def _rebiasable(mod: nn.Module) -> bool:
    """Whether :func:`_product` can run ``mod`` (a plain ``nn.Linear`` or :class:`BlockSparseLinear`
    with a bias, no hooks: it calls the ops, not the module)."""
    return type(mod) in (nn.Linear, BlockSparseLinear) and mod.bias is not None and not mod._forward_hooks \
        and not mod._forward_pre_hooks


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


#: Operand orders of the block products in exported graphs (see
#: :func:`~compressor.kernels.block_ops.balanced_block_linear`'s ``weights_left``).
PRODUCT_ORDERS = ("input_left", "weights_left")


class _SparseRNN(nn.Module):
    _base: type[nn.RNNBase]
    _gates: int
    #: Which operand order exported graphs use for balanced block-sparse products
    #: (:data:`PRODUCT_ORDERS`): ``W_hh`` in the ``Scan`` of ``forward``, ``W_ih`` and ``W_hh`` in a
    #: ``step``; eager runs are unaffected. ``compressor.export`` sets it per module and graph to
    #: whichever ran faster in ONNX Runtime on the example input, then restores it.
    product_order: str = "input_left"

    def _exported_product(self, mod: nn.Module, with_bias: bool = True):
        """``mod`` itself, or where :attr:`product_order` is ``weights_left`` and ``mod`` a balanced
        :class:`BlockSparseLinear`, its product in that order (for tracing: same result). Without
        ``with_bias`` (``mod`` then :func:`_rebiasable`), the product without the bias."""
        if self.product_order not in PRODUCT_ORDERS:
            raise ValueError(f"product_order must be one of {PRODUCT_ORDERS}, got {self.product_order!r}")
        weights_left = self.product_order == "weights_left" and type(mod) is BlockSparseLinear and mod.layout == "balanced"
        if with_bias and not weights_left:
            return mod
        bias = mod.bias if with_bias else None
        return lambda x: _product(mod, x, bias, weights_left)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
                 bidirectional: bool, dropout: float, cells: dict[str, nn.Module]):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional, self.dropout = bias, batch_first, bidirectional, dropout
        self.num_directions = 2 if bidirectional else 1
        self.proj = nn.ModuleDict(cells)  # "ih_l0", "hh_l0", "ih_l0_reverse", ...

    @classmethod
    def from_dense(cls, rnn: nn.RNNBase, masks: dict[str, torch.Tensor] | None = None, block=(32, 32),
                   layout: str = "auto"):
        """Build from an ``nn.LSTM`` / ``nn.GRU``; ``masks`` maps weight names (``weight_hh_l0``,
        ``weight_ih_l1_reverse``, ...) to bool masks of whole ``block`` blocks. Weights without a mask
        stay dense. Deterministic (a loader can rebuild from dense masked weights + masks)."""
        masks = dict(masks or {})

        def sparse(i, name, lin):
            return lin if masks[name] is None else BlockSparseLinear.from_dense(lin, masks[name], block, layout)

        return cls._from_cells(rnn, set(masks), sparse, "masks has ")

    @classmethod
    def _from_cells(cls, rnn: nn.RNNBase, chosen: set[str] | None, make, what: str = ""):
        """Shared by the sparse and gated builders: one projection per weight of ``rnn``
        (``nn.Linear`` copies), ``make(i, name, linear)`` replacing those named in ``chosen``
        (None: every weight). ``what`` prefixes the unknown-name error."""
        if not isinstance(rnn, cls._base):
            raise TypeError(f"rnn must be an nn.{cls._base.__name__}, got {type(rnn).__name__}")
        if getattr(rnn, "proj_size", 0):
            raise ValueError(f"rnn.proj_size={rnn.proj_size} is not supported (only proj_size=0)")
        names = [n for n in rnn._flat_weights_names if n.startswith("weight_")]
        chosen = set(names) if chosen is None else chosen
        unknown = sorted(chosen - set(names))
        if unknown:
            raise ValueError(f"{what}unknown weight names {unknown}; valid names: {names}")
        cells = {}
        for i, name in enumerate(names):
            part = name[len("weight_"):]  # "ih_l0", "hh_l1_reverse"
            lin = _linear(getattr(rnn, name).detach(), getattr(rnn, "bias_" + part).detach() if rnn.bias else None)
            cells[part] = make(i, name, lin) if name in chosen else lin
        return cls.from_projections(rnn, cells)

    @classmethod
    def from_projections(cls, rnn: nn.RNNBase, cells: dict[str, nn.Module]):
        """Build around ready projections, one per weight of ``rnn`` (``"ih_l0"``, ``"hh_l1_reverse"``
        ... -> a :class:`BlockSparseLinear` or an ``nn.Linear``, bias included). Only ``rnn``'s sizes
        and flags are read, so it may live on the meta device: the artifact loader builds the
        projections straight from packed weights and never allocates the dense ones."""
        if not isinstance(rnn, cls._base):
            raise TypeError(f"rnn must be an nn.{cls._base.__name__}, got {type(rnn).__name__}")
        if getattr(rnn, "proj_size", 0):
            raise ValueError(f"rnn.proj_size={rnn.proj_size} is not supported (only proj_size=0)")
        names = [n[len("weight_"):] for n in rnn._flat_weights_names if n.startswith("weight_")]
        if sorted(cells) != sorted(names):
            raise ValueError(f"projections must be exactly {names}, got {sorted(cells)}")
        for part in names:
            out, inp = getattr(rnn, "weight_" + part).shape
            cell = cells[part]
            bias = getattr(cell, "bias", None)
            if (getattr(cell, "out_features", None), getattr(cell, "in_features", None)) != (out, inp) \
                    or (bias is not None) != bool(rnn.bias) or (bias is not None and tuple(bias.shape) != (out,)):
                raise ValueError(f"projection {part} must map {inp} -> {out} features "
                                 f"{'with' if rnn.bias else 'without'} a bias, got {type(cell).__name__}")
        return cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first, rnn.bidirectional,
                   float(rnn.dropout), dict(cells))

    # -- dense round trip -------------------------------------------------------------------
    def to_dense(self) -> nn.RNNBase:
        """An ``nn.LSTM`` / ``nn.GRU`` with the (masked) weights of this module (a gated module
        gives its stored weights: the gating is lost)."""
        p = next(self.parameters())
        rnn = self._base(self.input_size, self.hidden_size, self.num_layers, bias=self.bias, batch_first=self.batch_first,
                         dropout=self.dropout, bidirectional=self.bidirectional, dtype=p.dtype, device=p.device)
        with torch.no_grad():
            for part, mod in self.proj.items():
                w = mod.to_dense_weight() if hasattr(mod, "to_dense_weight") else mod.weight
                getattr(rnn, "weight_" + part).copy_(w)
                if self.bias:
                    getattr(rnn, "bias_" + part).copy_(mod.bias)
        return rnn.train(self.training)  # a fresh module trains: in eval it must not apply its dropout

    # -- full sequence ----------------------------------------------------------------------
    def _zeros(self, B: int, ref: torch.Tensor) -> torch.Tensor:
        return ref.new_zeros(self.num_layers * self.num_directions, B, self.hidden_size)

    def forward(self, input: torch.Tensor, hx=None):
        """Same inputs and outputs as ``nn.LSTM`` / ``nn.GRU`` (``proj_size=0``).

        At inference on CPU (nothing needs a gradient, fp32/fp64, a C compiler available and
        ``COMPRESSOR_NATIVE`` not 0) every layer and direction whose recurrent weight is a
        :class:`BlockSparseLinear` runs its whole time loop in one native call
        (:func:`compressor.kernels.native.rnn_layer`); otherwise, and always for training, the
        torch path below runs one step at a time (the reference: both give the same outputs up to
        float rounding). A ``PackedSequence``, an empty sequence or a state of the wrong shape is a
        ValueError (``nn.LSTM`` accepts packed sequences; pad them with
        ``torch.nn.utils.rnn.pad_packed_sequence`` first).
        """
        if isinstance(input, PackedSequence):
            raise ValueError(f"{type(self).__name__} does not take a PackedSequence: pad it first "
                             "(torch.nn.utils.rnn.pad_packed_sequence) and pass the padded tensor")
        if not isinstance(input, torch.Tensor):
            raise ValueError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"input must be (T, B, {self.input_size}), (B, T, {self.input_size}) or "
                             f"(T, {self.input_size}), got shape {tuple(input.shape)}")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)  # (T, B, in)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"input has an empty {'sequence' if x.shape[0] == 0 else 'batch'} dimension "
                             f"(shape {tuple(input.shape)}, batch_first={self.batch_first}); "
                             "nn.LSTM / nn.GRU need at least one step and one example too")
        self._check_hx(hx, x.shape[1], unbatched)
        state = self._init_state(hx, x, unbatched)
        finals: list = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                sfx = f"l{layer}" + ("_reverse" if d else "")
                ih, hh = self.proj["ih_" + sfx], self.proj["hh_" + sfx]
                layer_state = self._layer_state(state, layer * self.num_directions + d)
                # exported LSTM: b_hh joins b_ih in the input projection (one constant), so the Scan
                # body adds no bias per step (2-layer 1024-wide LSTM at 75%, batch 16 x 128, timed
                # alone at export in ORT: 236-238 against 252-257 ms)
                fold = torch.compiler.is_exporting() and self._gates == 4 and _rebiasable(ih) and _rebiasable(hh)
                if fold:
                    xproj = _product(ih, x, ih.bias + hh.bias)
                else:
                    xproj = _native_input_projection(ih, x)  # (T, B, G*H): whole sequence at once
                    xproj = ih(x) if xproj is None else xproj
                done = self._native_direction(xproj, hh, layer_state, bool(d))
                out, last = done if done is not None else self._run_direction(xproj, hh, layer_state, reverse=bool(d),
                                                                              hh_bias=not fold)
                outs.append(out)
                finals.append(last)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        out = x.squeeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        return out, self._pack_final(finals, unbatched)

    def _check_hx(self, hx, B: int, unbatched: bool) -> None:
        """A given ``hx`` must be ``(num_layers * num_directions, B, hidden)`` tensors (without the
        batch dimension for unbatched input; a pair for LSTM): the native kernel trusts sizes, and a
        wrong batch (say a ``batch_first`` mismatch) must not broadcast into a wrong result."""
        if hx is None:
            return
        lstm = self._gates == 4
        parts = tuple(hx) if lstm and isinstance(hx, (tuple, list)) else (hx,)
        L = self.num_layers * self.num_directions
        want = (L, self.hidden_size) if unbatched else (L, B, self.hidden_size)
        if (lstm and len(parts) != 2) or any(not isinstance(t, torch.Tensor) or t.shape != want for t in parts):
            got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in parts]
            raise ValueError(f"hx must be {'a pair (h, c) of ' if lstm else 'a '}{want} tensor{'s' if lstm else ''} "
                             f"for input of this shape (batch_first={self.batch_first}), got {got}")

    def _native_direction(self, xproj: torch.Tensor, hh: nn.Module, state, reverse: bool):
        """``(out, last_state)`` of one layer and direction from the native kernel, or None where
        it cannot run (see :meth:`forward`): ``hh`` not a plain :class:`BlockSparseLinear`, its
        backend ``triton`` (asked for explicitly), hooks on it (the kernel does not call the module),
        autograd, a device or dtype the kernel lacks, tracing, or no compiled library.

        Backends ``auto``, ``torch`` and ``native`` all take the kernel on CPU: ``backend`` chooses between the
        torch ops and the Triton (GPU) kernels, and the ``swap_kernels`` pass records ``torch`` on
        a machine without CUDA, so requiring ``auto`` would leave every swapped model stepping from
        Python. ``COMPRESSOR_NATIVE=0`` is the switch for the per-step torch ops."""
        if not _native_module(hh) or hh.in_features != self.hidden_size:
            return None  # (the kernel reads the hidden state's width of columns: a foreign hh goes to torch)
        h0, c0 = (state if isinstance(state, tuple) else (state, None))
        p = hh._parameters
        values, bias = p["values"], p.get("bias")
        tensors = [t for t in (values, bias, h0, c0) if t is not None]
        if not native.native_eligible(xproj, *tensors):
            return None
        out, h, c = native.rnn_layer(xproj, *_native_index(hh), bias, h0, c0, reverse, index_checked=True)
        return out, ((h, c) if c0 is not None else h)

    def _run_direction(self, xproj: torch.Tensor, hh: nn.Module, state, reverse: bool, hh_bias: bool = True):
        if torch.compiler.is_exporting():
            return self._scan_direction(xproj, hh, state, reverse, hh_bias)
        T = xproj.shape[0]
        steps = xproj.unbind(0)  # not xproj[t]: the backward of T selects builds T full-size zero tensors (O(T^2))
        hs = []
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            state = self._cell(steps[t], hh, state)
            hs.append(self._hidden(state))
        if reverse:
            hs.reverse()
        return torch.stack(hs, dim=0), state  # (T, B, H)

    def _scan_direction(self, xproj: torch.Tensor, hh: nn.Module, state, reverse: bool, hh_bias: bool = True):
        """The time loop as one ``scan`` (torch's higher-order op): ``torch.export`` keeps it as a
        loop and the ONNX exporter writes it as an ONNX ``Scan`` whose body is one step (the
        recurrent block-sparse product and the gates), so the graph runs any sequence length with
        no per-step Python and does not grow with the example's length (unrolled, a 128-step
        2-layer LSTM was 256 copies of the step)."""
        from torch._higher_order_ops.scan import scan  # not public API yet; the exporter maps it to Scan

        product = self._exported_product(hh, with_bias=hh_bias)  # without: the caller put b_hh in xproj

        def step(carry, x_t):
            carry = self._cell(x_t, product, carry)
            return carry, self._hidden(carry).clone()  # a scan output may not alias the carry

        # the initial carry may not alias (LSTM's zero h and c are one tensor; layer states are views)
        state = tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()
        last, out = scan(step, state, xproj, reverse=reverse)
        return out, last

    # -- streaming --------------------------------------------------------------------------
    def step(self, x_t: torch.Tensor, state=None):
        """One time step through all layers: ``x_t (B, input_size)`` -> ``(y_t (B, hidden), state)``.

        ``state`` is what ``forward`` returns as its second output (``(h, c)`` for LSTM, ``h`` for
        GRU, each ``(num_layers, B, hidden)``), or None for zeros. Unidirectional models only.
        Where :meth:`forward` would, each layer's recurrent product and gates run as one native call
        (a one-step sequence): the torch cell is half a dozen op dispatches per layer.
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional model (bidirectional=False)")
        if x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t must be (B, {self.input_size}), got shape {tuple(x_t.shape)}")
        state = self._init_state(state, x_t.unsqueeze(0), False)
        plan = self._step_plan(x_t)
        if plan is not None:
            lstm = plan.lstm
            done = plan.run(x_t, *(state if lstm else (state, None)))
            if done is not None:
                y, h, c = done
                return y, ((h, c) if lstm else h)
        finals = []
        x = x_t
        for layer in range(self.num_layers):
            sfx = f"l{layer}"
            ih, hh, layer_state = self.proj["ih_" + sfx], self.proj["hh_" + sfx], self._layer_state(state, layer)
            if torch.compiler.is_exporting():  # the step graph: products in the order export chose
                s = self._cell(self._exported_product(ih)(x), self._exported_product(hh), layer_state)
            else:
                xproj = _native_input_projection(ih, x)
                xproj = ih(x) if xproj is None else xproj
                done = self._native_direction(xproj.unsqueeze(0), hh, layer_state, False)  # a one-step sequence
                s = done[1] if done is not None else self._cell(xproj, hh, layer_state)
            finals.append(s)
            x = self._hidden(s)
        return x, self._pack_final(finals, False)

    def _step_plan(self, x_t: torch.Tensor):
        """The native :class:`~compressor.kernels.native.StepPlan` for a streaming step where every
        layer's ``W_ih`` and ``W_hh`` can run natively (see :meth:`_native_direction`) and the input
        projections would at this batch (:func:`_native_input_projection`'s density rule); None
        otherwise. Built once and kept on the module while the tensors it points at are unchanged
        (their addresses and versions are its key), so a step costs the C calls plus a few checks."""
        if not x_t.is_cpu or x_t.dtype not in (torch.float32, torch.float64) or native.library() is None \
                or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return None  # tracing sees the torch ops (and its tensors have no addresses to key on)
        mods = []
        for layer in range(self.num_layers):
            ih, hh = self.proj[f"ih_l{layer}"], self.proj[f"hh_l{layer}"]
            if not (_native_module(ih) and _native_module(hh)) or not ih.values.is_cpu or not hh.values.is_cpu:
                return None  # (meta or CUDA weights: no index to check, no pointers to keep)
            mods += [ih, hh]
        if torch.is_grad_enabled() and any(p.requires_grad for m in mods for p in m._parameters.values() if p is not None):
            return None  # training: the torch path, which autograd sees
        key = tuple(_tensor_key(t) for m in mods for t in (m._parameters["values"], m._parameters.get("bias"),
                                                            *((m.col_idx,) if m.layout == "balanced"
                                                              else (m.crow_indices, m.col_indices))))
        cached = _STEP_PLANS.get(self)
        if cached is None or cached[0] != key:
            cached = (key, self._build_step_plan(mods, key))
            _STEP_PLANS[self] = cached
        plan, dense_input = cached[1] if cached[1] is not None else (None, False)
        if plan is None or (x_t.shape[0] >= DENSE_BATCH and dense_input):
            return None
        return plan

    def _build_step_plan(self, mods: list[nn.Module], key: tuple):
        """``(plan, dense_input)`` or None where the layers' block grids do not tile their weights
        (the general path pads and crops)."""
        layers, dense_input = [], False
        for ih, hh in zip(mods[0::2], mods[1::2]):
            vi, ci, ki = _native_index(ih)
            vh, ch, kh = _native_index(hh)
            bh, bw = ih.block
            stored = vi.numel() / max(1, -(-ih.out_features // bh) * bh * -(-ih.in_features // bw) * bw)
            dense_input |= stored >= NATIVE_MAX_DENSITY
            layers.append(((vi, ci, ki, ih._parameters.get("bias"), ih.in_features, ih.out_features),
                           (vh, ch, kh, hh._parameters.get("bias"), hh.in_features, hh.out_features)))
        try:
            return native.StepPlan(layers, self.input_size, self.hidden_size, isinstance(self, SparseLSTM), key), dense_input
        except ValueError:
            return None

    def _apply(self, fn, recurse=True):
        _STEP_PLANS.pop(self, None)  # .to(), .double(), ...: the plan's pointers would keep the old tensors alive
        return super()._apply(fn, recurse)

    def step_module(self) -> "RNNStep":
        """``nn.Module`` with tensor inputs/outputs around :meth:`step` (for ONNX export)."""
        return RNNStep(self)


class SparseLSTM(_SparseRNN):
    """Block-sparse drop-in for ``nn.LSTM`` (build with :meth:`from_dense`)."""

    _base = nn.LSTM
    _gates = 4

    def _init_state(self, hx, x, unbatched):
        if hx is None:
            z = self._zeros(x.shape[1], x)
            return z, z
        h, c = hx
        return (h.unsqueeze(1), c.unsqueeze(1)) if unbatched else (h, c)

    @staticmethod
    def _layer_state(state, i):
        return state[0][i], state[1][i]

    @staticmethod
    def _cell(xproj_t, hh, state):
        h, c = state
        gates = xproj_t + hh(h)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    @staticmethod
    def _hidden(state):
        return state[0]

    @staticmethod
    def _pack_final(finals, unbatched):
        h = torch.stack([s[0] for s in finals], dim=0)  # (L*D, B, H)
        c = torch.stack([s[1] for s in finals], dim=0)
        return (h.squeeze(1), c.squeeze(1)) if unbatched else (h, c)


class SparseGRU(_SparseRNN):
    """Block-sparse drop-in for ``nn.GRU`` (build with :meth:`from_dense`)."""

    _base = nn.GRU
    _gates = 3

    def _init_state(self, hx, x, unbatched):
        if hx is None:
            return self._zeros(x.shape[1], x)
        return hx.unsqueeze(1) if unbatched else hx

    @staticmethod
    def _layer_state(state, i):
        return state[i]

    @staticmethod
    def _cell(xproj_t, hh, h):
        hp = hh(h)  # (B, 3H), includes b_hh
        xr, xz, xn = xproj_t.chunk(3, dim=1)
        hr, hz, hn = hp.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n)  # (1 - z) * n + z * h

    @staticmethod
    def _hidden(state):
        return state

    @staticmethod
    def _pack_final(finals, unbatched):
        h = torch.stack(finals, dim=0)  # (L*D, B, H)
        return h.squeeze(1) if unbatched else h


class RNNStep(nn.Module):
    """Tensor-only wrapper of ``rnn.step``: LSTM ``(x_t, h, c) -> (y_t, h, c)``, GRU ``(x_t, h) -> (y_t, h)``."""

    def __init__(self, rnn: _SparseRNN):
        super().__init__()
        self.rnn = rnn

    def forward(self, x_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None):
        if isinstance(self.rnn, SparseLSTM):
            y, (h2, c2) = self.rnn.step(x_t, (h, c))
            return y, h2, c2
        y, h2 = self.rnn.step(x_t, h)
        return y, h2
