"""A product-quantization layer trained jointly with the model (Poeem: Zhang et al., SIGIR 2021).

The layer sits on the item side: it rotates an item embedding by a learned orthogonal matrix (a product of
Givens rotations, so it stays orthogonal), assigns it to a coarse centroid, splits the residual into ``M``
subspaces and replaces each part by its nearest codeword. The forward pass returns the quantized vector
with a straight-through estimator (gradients reach the embedding as if the layer were the identity), and
:meth:`ProductQuantizer.loss` learns the rotation, centroids and codebooks with a reconstruction term plus
a commitment term that pulls embeddings towards their codes. :meth:`ProductQuantizer.warm_start` sets the
centroids and codebooks by k-means on a buffer of embeddings (train unquantized first, then warm-start).

mol-train trains it with the model through :class:`mol_index.layers.PQItemLayer` (``[index] kind =
"pq"``), and :mod:`mol_index.search.pq` turns a trained layer into a ``pq`` index.

Shapes: ``N`` embeddings of width ``d``, ``C`` coarse centroids, ``M`` subspaces of width ``d / M``,
``K`` codewords per subspace.
"""

from __future__ import annotations

import torch
from torch import nn

from mol_core.errors import ConfigError, ShapeError
from mol_index.clustering import kmeans

__all__ = ["GivensRotation", "ProductQuantizer"]


class GivensRotation(nn.Module):
    """A learned ``(d, d)`` rotation: ``layers`` brick-wall layers of Givens rotations of adjacent pairs.

    Layer ``l`` rotates the pairs ``(i, i + 1)`` for ``i = l % 2, l % 2 + 2, ...`` by its own angles; with
    ``d`` layers the product can express any rotation. All angles start at 0 (the identity).

    Args:
        dim: ``d`` (at least 2).
        layers: number of layers (default ``d``).
    """

    def __init__(self, dim: int, layers: int | None = None) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a rotation needs dim >= 2; got {dim}")
        self.dim = dim
        self.layers = layers or dim
        self.angles = nn.Parameter(torch.zeros(self.layers, dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (*, d) @ R``."""
        if x.shape[-1] != self.dim:
            raise ShapeError(f"expected (*, d={self.dim}); got {tuple(x.shape)}")
        for layer in range(self.layers):
            start = layer % 2
            pairs = (self.dim - start) // 2
            left = torch.arange(start, start + 2 * pairs, 2, device=x.device)
            cos, sin = torch.cos(self.angles[layer, :pairs]), torch.sin(self.angles[layer, :pairs])
            a, b = x[..., left], x[..., left + 1]
            x = x.clone()
            x[..., left] = cos * a - sin * b
            x[..., left + 1] = sin * a + cos * b
        return x

    def matrix(self) -> torch.Tensor:
        """``R (d, d)``, orthogonal."""
        return self.forward(torch.eye(self.dim, device=self.angles.device))


class ProductQuantizer(nn.Module):
    """Rotation, coarse centroid and product quantization of the residual, trainable end to end.

    Args:
        dim: ``d``, divisible by ``subspaces``.
        coarse: ``C`` coarse centroids (1 = plain PQ).
        subspaces: ``M``.
        codebook_size: ``K`` codewords per subspace.
        rotation: learn a Givens rotation before the split (Poeem's optimal space decomposition).
        commitment: weight of the commitment term in :meth:`loss`.
        ema_decay: 0 learns the centroids and codebooks by gradient (the reconstruction term); a value in
            ``(0, 1)`` moves them instead, at every :meth:`loss` call, towards the mean of the embeddings
            assigned to them (exponential moving average, as in VQ-VAE), and the reconstruction term then
            trains the rotation only. Across processes the batch means are all-reduced first.
    """

    def __init__(
        self,
        dim: int,
        *,
        coarse: int = 1,
        subspaces: int = 8,
        codebook_size: int = 256,
        rotation: bool = True,
        commitment: float = 0.25,
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1); got {ema_decay}")
        if subspaces < 1 or dim % subspaces:
            raise ConfigError(f"dim {dim} must be divisible by the number of subspaces; got {subspaces}")
        if coarse < 1 or codebook_size < 1:
            raise ConfigError(f"coarse and codebook_size must be >= 1; got {coarse} and {codebook_size}")
        self.dim, self.subspaces, self.codebook_size = dim, subspaces, codebook_size
        self.commitment = commitment
        self.rotation = GivensRotation(dim) if rotation else None
        self.centroids = nn.Parameter(torch.zeros(coarse, dim))
        self.codebooks = nn.Parameter(torch.randn(subspaces, codebook_size, dim // subspaces) * 0.01)
        self.ema_decay = ema_decay
        if ema_decay > 0:  # moved by _ema_update, not by the optimizer
            self.centroids.requires_grad_(False)
            self.codebooks.requires_grad_(False)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        # x @ R with R built once (d x d) rather than the Givens layers applied to every row: the same
        # linear map, far cheaper for the thousands of rows of a training batch
        return x if self.rotation is None else x @ self.rotation.matrix()

    def _assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated ``z (N, d)`` -> ``(coarse (N,), codes (N, M), quantized z (N, d))``."""
        coarse = torch.cdist(z, self.centroids).argmin(1)  # (N,)
        residual = (z - self.centroids[coarse]).view(z.shape[0], self.subspaces, -1)  # (N, M, d/M)
        distances = torch.cdist(residual.transpose(0, 1), self.codebooks)  # (M, N, K)
        codes = distances.argmin(-1).T  # (N, M)
        words = self.codebooks[torch.arange(self.subspaces), codes]  # (N, M, d/M)
        return coarse, codes, self.centroids[coarse] + words.reshape(z.shape[0], -1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, d)`` -> ``(coarse ids (N,), codes (N, M))``: what an index stores per item."""
        self._check(x)
        with torch.no_grad():
            coarse, codes, _ = self._assign(self._rotate(x))
        return coarse, codes

    def decode(self, coarse: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The ``(N, d)`` reconstruction of stored codes, in the original (unrotated) space."""
        words = self.codebooks[torch.arange(self.subspaces), codes]  # (N, M, d/M)
        z = self.centroids[coarse] + words.reshape(codes.shape[0], -1)
        return z if self.rotation is None else z @ self.rotation.matrix().T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized ``x (N, d)`` with a straight-through gradient to ``x``."""
        self._check(x)
        _, _, quantized_z = self._assign(self._rotate(x))
        quantized = quantized_z if self.rotation is None else quantized_z @ self.rotation.matrix().T
        return x + (quantized - x).detach()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (learns rotation, centroids, codebooks) + ``commitment`` x commitment (moves
        the embeddings towards their codes), both mean squared errors in the rotated space."""
        self._check(x)
        z_fixed = self._rotate(x.detach())
        if self.ema_decay > 0 and self.training:
            self._ema_update(z_fixed.detach())
        _, _, quantized = self._assign(z_fixed)
        reconstruction = (z_fixed - quantized).pow(2).sum(-1).mean()
        commit = (self._rotate(x) - quantized.detach()).pow(2).sum(-1).mean()
        return reconstruction + self.commitment * commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor) -> None:
        """Moves every centroid and codeword a ``1 - ema_decay`` step towards the mean of the rotated
        embeddings ``z (n, d)`` assigned to it (unassigned ones stay)."""
        coarse, codes, _ = self._assign(z)
        num_coarse, width = self.centroids.shape[0], self.dim // self.subspaces
        residual = (z - self.centroids[coarse]).view(-1, self.subspaces, width)  # (n, M, d/M)
        slots = (codes + torch.arange(self.subspaces, device=z.device) * self.codebook_size).reshape(-1)
        sums = [
            torch.zeros(num_coarse, self.dim, device=z.device).index_add_(0, coarse, z),
            torch.zeros(self.subspaces * self.codebook_size, width, device=z.device).index_add_(
                0, slots, residual.reshape(-1, width)
            ),
        ]
        counts = [
            torch.bincount(coarse, minlength=num_coarse).float(),
            torch.bincount(slots, minlength=self.subspaces * self.codebook_size).float(),
        ]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in (*sums, *counts):
                torch.distributed.all_reduce(tensor)
        step = 1.0 - self.ema_decay
        for target, total, count in (
            (self.centroids.data, sums[0], counts[0]),
            (self.codebooks.data.view(-1, width), sums[1], counts[1]),
        ):
            seen = count > 0
            mean = total[seen] / count[seen].unsqueeze(1)
            target[seen] += step * (mean - target[seen])

    @torch.no_grad()
    def warm_start(self, buffer: torch.Tensor, *, iterations: int = 20, seed: int = 0) -> None:
        """Sets the centroids and codebooks by k-means on ``buffer (n, d)`` (rotated by the current rotation).

        Raises:
            ConfigError: fewer buffered embeddings than coarse centroids or than codewords per subspace.
        """
        self._check(buffer)
        need = max(self.centroids.shape[0], self.codebook_size)
        if buffer.shape[0] < need:
            raise ConfigError(
                f"too few items for the codebook size: {buffer.shape[0]} embeddings to warm-start "
                f"{self.centroids.shape[0]} coarse centroids and {self.codebook_size} codewords per subspace"
            )
        z = self._rotate(buffer.float())
        self.centroids.copy_(kmeans(z, self.centroids.shape[0], iterations=iterations, seed=seed))
        residual = z - self.centroids[torch.cdist(z, self.centroids).argmin(1)]
        parts = residual.view(z.shape[0], self.subspaces, -1)
        for m in range(self.subspaces):
            self.codebooks[m] = kmeans(parts[:, m], self.codebook_size, iterations=iterations, seed=seed + m)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"expected embeddings of shape (N, d={self.dim}); got {tuple(x.shape)}")
