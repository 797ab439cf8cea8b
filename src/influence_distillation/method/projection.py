"""Seeded random projections that never materialise a dense matrix.

`HadamardProjector` is a subsampled randomized Hadamard transform (SRHT): zero-pad x from D to n = 2^ceil(log2 D),
flip signs at random, apply the orthonormal Walsh–Hadamard transform H_n, keep k random coordinates and rescale by
sqrt(n/k) so that E‖y‖² = ‖x‖². The transform costs O(n log n) time and O(n) memory. H_n is applied as a Kronecker
product of small dense Hadamard matrices (H_n = H_a ⊗ H_b ⊗ …), i.e. a few batched matmuls, which is several times
faster in PyTorch than a radix-2 butterfly and runs unchanged on CPU and CUDA.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

# Largest dense Hadamard factor; 128 measured fastest on CPU for n = 2^20..2^25 (see docs/BENCHMARKS.md).
MAX_FACTOR = 128


@lru_cache(maxsize=16)
def _hadamard(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Unnormalised Sylvester Hadamard matrix of a power-of-two size."""
    matrix = torch.ones(1, 1, dtype=dtype, device=device)
    while matrix.shape[0] < size:
        matrix = torch.cat((torch.cat((matrix, matrix), 1), torch.cat((matrix, -matrix), 1)), 0)
    return matrix


def _factor_bits(log_n: int) -> list[int]:
    """Split log2(n) into near-equal parts of at most log2(MAX_FACTOR) bits."""
    parts = -(-log_n // (MAX_FACTOR.bit_length() - 1)) if log_n else 0
    return [log_n // parts + (1 if i < log_n % parts else 0) for i in range(parts)]


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform along the last dimension (a power of two), Sylvester order.

    x is viewed as a tensor with one axis per factor; each factor's Hadamard matrix multiplies its axis. All but the
    last factor are left-multiplied (batched GEMMs with long rows); the last one, whose rows would be length 1,
    is applied as one large right-multiplication instead.
    """
    *lead, n = x.shape
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    factor_bits = _factor_bits(n.bit_length() - 1)
    batch = math.prod(lead)
    y = x.reshape(batch, n)
    left = 1
    for i, bits in enumerate(factor_bits):
        size = 1 << bits
        hadamard = _hadamard(size, y.dtype, y.device)
        if i == len(factor_bits) - 1:
            y = y.reshape(-1, size) @ hadamard  # Sylvester matrices are symmetric
        else:
            y = torch.matmul(hadamard, y.reshape(batch * left, size, n // (left * size)))
        left *= size
    return (y / math.sqrt(n)).reshape(*lead, n)


class HadamardProjector:
    """y = sqrt(n/k) · S H_n D x for inputs of size `in_dim`; see the module docstring.

    The seed fixes D (signs) and S (kept rows), so two projectors with the same arguments are identical on any device.
    """

    def __init__(self, in_dim: int, out_dim: int, seed: int):
        self.in_dim, self.out_dim = in_dim, out_dim
        self.padded_dim = 1 << max(0, (in_dim - 1).bit_length())
        if out_dim > self.padded_dim:
            raise ValueError(f"cannot subsample {out_dim} of {self.padded_dim} Hadamard coordinates")
        rng = np.random.default_rng(seed)
        self.signs = torch.from_numpy(rng.integers(0, 2, size=in_dim, dtype=np.int8) * 2 - 1)
        self.rows = torch.from_numpy(np.sort(rng.choice(self.padded_dim, size=out_dim, replace=False)))
        self.scale = math.sqrt(self.padded_dim / out_dim)

    def __call__(self, x: torch.Tensor, diag: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
        """Project rows of x: (B, in_dim) → (B, out_dim), computed in float32.

        Args:
            diag: optional (in_dim,) weights applied first, i.e. project diag ⊙ x (used for preconditioning).
            normalize: project (diag ⊙ x)/‖diag ⊙ x‖ instead, without a pass to divide the full-size rows.
        """
        signs = self._float_signs(x.device)
        multiplier = signs if diag is None else signs * diag.to(x.device, torch.float32)
        padded = torch.empty(x.shape[0], self.padded_dim, dtype=torch.float32, device=x.device)
        padded[:, self.in_dim :] = 0
        torch.mul(x, multiplier, out=padded[:, : self.in_dim])
        scale = self.scale
        if normalize:
            scale = self.scale / padded.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return fwht(padded)[:, self.rows.to(x.device)] * scale

    def _float_signs(self, device: torch.device) -> torch.Tensor:
        """float32 signs on `device`, cached: multiplying by int8 signs takes a slow type-promotion path."""
        if getattr(self, "_signs_cache", (None,))[0] != device:
            self._signs_cache = (device, self.signs.to(device=device, dtype=torch.float32))
        return self._signs_cache[1]

    def dense(self) -> torch.Tensor:
        """The explicit (out_dim, in_dim) matrix, for tests on small sizes only."""
        return self(torch.eye(self.in_dim)).T


class IdentityProjector:
    """Keeps exact coordinates: used whenever the input is no larger than the requested size."""

    def __init__(self, in_dim: int):
        self.in_dim = self.out_dim = in_dim

    def __call__(self, x: torch.Tensor, diag: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64 for exact checks
        y = x.to(dtype) if diag is None else x.to(dtype) * diag.to(x.device, dtype)
        return y / y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny) if normalize else y


def make_projector(in_dim: int, out_dim: int, seed: int) -> HadamardProjector | IdentityProjector:
    """Project only when it reduces the size: a random map into as many or more dimensions adds noise, no savings."""
    return IdentityProjector(in_dim) if in_dim <= out_dim else HadamardProjector(in_dim, out_dim, seed)


class CountSketchProjector:
    """A seeded CountSketch: coordinate i of the input is added, with a random sign, to one random output bucket.

    y = S x with one non-zero (±1) per column of S, so the projection costs O(D) additions, against the
    O(D log D) of the Hadamard transform, and E⟨Sx, Sz⟩ = ⟨x, z⟩ with a variance like a dense Gaussian map's
    ((‖x‖²‖z‖² + ⟨x, z⟩²)/k to leading order). Buckets are stored as int32 and used in chunks; on an accelerator
    they are copied there once, not per call (per call, that copy was most of a 1.7B model's gradient time on a GPU).
    """

    CHUNK = 1 << 20
    DEVICE_CHUNK = 1 << 24  # an accelerator's kernels want fewer, larger launches

    def __init__(self, in_dim: int, out_dim: int, seed: int):
        self.in_dim, self.out_dim = in_dim, out_dim
        rng = np.random.default_rng(seed)
        self.buckets = torch.from_numpy(rng.integers(0, out_dim, size=in_dim, dtype=np.int32))
        self.signs = torch.from_numpy(rng.integers(0, 2, size=in_dim, dtype=np.int8) * 2 - 1)
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def _maps(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cpu":
            return self.buckets, self.signs
        if self._on_device is None or self._on_device[0].device != device:
            self._on_device = (self.buckets.to(device), self.signs.to(device))
        return self._on_device

    def __call__(self, x: torch.Tensor, diag: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
        """Project rows of x: (B, in_dim) → (B, out_dim), in float32 (float64 stays float64)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = torch.zeros(x.shape[0], self.out_dim, dtype=dtype, device=x.device)
        squared = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        buckets, signs = self._maps(x.device)
        chunk = self.CHUNK if x.device.type == "cpu" else self.DEVICE_CHUNK
        for start in range(0, self.in_dim, chunk):
            part = slice(start, min(start + chunk, self.in_dim))
            values = x[:, part].to(dtype)
            if diag is not None:
                values = values * diag[part].to(x.device, dtype)
            squared += values.square().sum(1)
            y.index_add_(1, buckets[part].long(), values * signs[part].to(dtype))
        return y / squared.sqrt().clamp_min(torch.finfo(dtype).tiny)[:, None] if normalize else y

    def dense(self) -> torch.Tensor:
        """The explicit (out_dim, in_dim) matrix, for tests on small sizes only."""
        matrix = torch.zeros(self.out_dim, self.in_dim)
        matrix[self.buckets.long(), torch.arange(self.in_dim)] = self.signs.float()
        return matrix
