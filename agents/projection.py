"""Linear projections of a few rows on CPU, the shape every decoding step has.

A decoding step multiplies one position per sequence (8 to 32 rows) by every weight of the model,
so it streams the weights once and computes almost nothing. On this project's 2-core CPU (MKL
sgemm, fp32), ``linear(x, W)`` is slow at that shape and ``W @ x.T``, the same numbers, is not.
Measured with the two paths interleaved in one process (ABBA order, 2026-12-05):

- SmolLM2's 49152 x 576 head at 8 rows: 7.2 ms against 18.5 ms.
- A decoding step of its 30 backbone layers at batch 8: 59.4 ms against 73.9 ms (8 pairs, each
  1.20-1.28x).
- One head decoding at batch 8 (``generate``, 64 tokens): 95.7 against 83.6 tokens/s (8 pairs,
  each 1.09-1.19x).

The product is made contiguous again before it leaves the layer, so that attention keeps its
fused kernel (a transposed view sends it down its unfused path). In bf16 it is the other way
round: oneDNN's bf16 ``linear`` is faster (one head 130 against 119 tokens/s), so only float32
takes this path.

MKL's product is quick for up to 8 rows and for multiples of 8, and slow for the rows left over
beyond a multiple of 8. SmolLM2's head at 15 rows takes 25.0 ms, at 16 rows 13.9 ms; at 63 rows
43 ms, at 64 rows 28 ms (every count from 1 to 64 measured, 2026-12-05). So more than
``PANEL_FROM`` rows are padded with zero rows to a multiple of 8, and the padding's columns
dropped. One row alone goes the same way, as two: MKL then takes its matrix-vector path, which
streams a large weight 2-3x slower than its two-column product (SmolLM2's head: 9.4 ms against
2.8 ms for two rows; a 32000 x 2048 head: 14.1 against 9.0 ms; square matrices come out even), so
that applies to weights of at least ``GEMV_PAD_NUMEL`` entries.

The result equals ``linear``'s up to float rounding; BLAS guarantees no bit-equality across shapes
either. A model whose layers all go this way samples the same tokens under ``transformers``
``generate`` as under this project's own loop. Many rows (prefills, the learner's batches) and
other devices keep ``linear``.
"""

from __future__ import annotations

import torch
from torch import nn

SKINNY_ROWS = 64  # up to this many positions, a CPU projection is taken as weight @ hidden.T
ALIGNMENT = 64  # bytes; torch's own CPU allocations are aligned so
GEMV_PAD_NUMEL = 4 * 2**20  # a weight this large (16 MB in fp32) projects one row as two (MKL's gemv is slower)
PANEL = 8  # MKL's few-row product handles rows in panels of 8 and the rest slowly ...
PANEL_FROM = 11  # ... so above this many rows, pad them to a whole number of panels


def padded_rows(rows: int, weight: torch.Tensor) -> int:
    """How many rows :func:`project` multiplies ``weight`` by for ``rows`` real ones (the rest zeros)."""
    if rows == 1 and weight.numel() >= GEMV_PAD_NUMEL:
        return 2
    if rows > PANEL_FROM and rows % PANEL:
        return rows + PANEL - rows % PANEL
    return rows


def _skinny(hidden: torch.Tensor, rows: int) -> bool:
    """Whether ``rows`` rows of ``hidden`` take the few-row product (fp32 on a CPU, at most ``SKINNY_ROWS``)."""
    return hidden.device.type == "cpu" and hidden.dtype == torch.float32 and 0 < rows <= SKINNY_ROWS


def _zero_rows_to(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` ``(N, C)`` with zero rows appended up to ``rows``."""
    return x if rows == x.shape[0] else torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])])


def project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden @ weight.T + bias`` from hidden states ``(..., H)`` to ``(..., O)``, fast for few fp32 rows on CPU."""
    rows = hidden.numel() // hidden.shape[-1]
    if not _skinny(hidden, rows):
        return nn.functional.linear(hidden, weight, bias)
    flat = _zero_rows_to(hidden.reshape(rows, -1), padded_rows(rows, weight))
    out = (weight @ flat.T)[:, :rows].T.contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*hidden.shape[:-1], weight.shape[0])


def project_mixture(hidden: torch.Tensor, weights: list[torch.Tensor], coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_d coefficients[:, d] * (hidden @ weights[d].T)``: each row's own mixture of projections.

    Args:
        hidden: ``(N, H)`` rows.
        weights: ``D`` weights ``(O, H)``.
        coefficients: ``(N, D)``, each row's coefficient for each weight.

    Returns:
        ``(N, O)``. For few fp32 rows on a CPU outside autograd, each coefficient scales its row's
        input instead of its output, and the products accumulate inside the matrix product
        (``addmm`` into one ``(O, N)`` buffer, made row-major once at the end). Five SmolLM2 heads at
        8 rows take 34.5 ms that way against 39.5 ms for five products scaled and summed (36.5 ms for
        the products alone, each made row-major). The rows are padded as :func:`project` pads them.
        Otherwise the projections are scaled and summed.
    """
    rows = hidden.shape[0]
    if not _skinny(hidden, rows) or (torch.is_grad_enabled()
                                     and any(t.requires_grad for t in (hidden, coefficients, *weights))):
        out = None
        for d, weight in enumerate(weights):
            term = project(hidden, weight) * coefficients[:, d:d + 1]
            out = term if out is None else out + term
        return out
    padded = padded_rows(rows, weights[0])
    hidden, coefficients = _zero_rows_to(hidden, padded), _zero_rows_to(coefficients, padded)
    out = hidden.new_empty(weights[0].shape[0], padded)  # (O, N)
    for d, weight in enumerate(weights):
        scaled = (hidden * coefficients[:, d:d + 1]).T
        if d == 0:
            torch.mm(weight, scaled, out=out)
        else:
            torch.addmm(out, weight, scaled, out=out)
    return out[:, :rows].T.contiguous()


class SkinnyLinear(nn.Linear):
    """An ``nn.Linear`` whose forward goes through :func:`project`; same parameters, same state dict."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Linear's own argument name)
        """``input @ weight.T + bias``, through :func:`project`."""
        return project(input, self.weight, self.bias)


def use_skinny_linears(model: nn.Module) -> int:
    """Makes every plain ``nn.Linear`` of ``model`` a :class:`SkinnyLinear`, in place.

    Only modules whose type is exactly ``nn.Linear`` change (their class, nothing else), so peft
    wrappers, quantised layers and GPT-2's ``Conv1D`` are left as they are, and a second call does
    nothing. Parameters and buffers that are not 64-byte aligned (those of a checkpoint memory-mapped
    by safetensors) are copied to aligned memory first: MKL's few-row product gives other low bits
    for a misaligned weight, so without the copy a policy reloaded from its folder would not give
    its in-memory logits bit for bit. The copy costs no speed, and a transient copy of the weights
    while it runs.

    Returns:
        How many modules changed.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % ALIGNMENT:
                tensor.data = tensor.data.clone()
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = SkinnyLinear
            changed += 1
    return changed
