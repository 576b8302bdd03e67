"""The jointly trainable PQ layer (Poeem): rotation, straight-through quantization, k-means, training."""

from __future__ import annotations

import pytest
import torch

from mol_core.errors import ConfigError, ShapeError
from mol_index.clustering import kmeans
from mol_index.layers.pq import GivensRotation, ProductQuantizer


def test_givens_rotation_is_orthogonal_and_learnable() -> None:
    rotation = GivensRotation(6)
    torch.testing.assert_close(rotation.matrix(), torch.eye(6))  # zero angles: identity
    with torch.no_grad():
        rotation.angles.uniform_(-3, 3, generator=torch.Generator().manual_seed(0))
    r = rotation.matrix()
    torch.testing.assert_close(r @ r.T, torch.eye(6), atol=1e-5, rtol=0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(rotation(x), x @ r, atol=1e-5, rtol=0)
    rotation(x).sum().backward()
    assert rotation.angles.grad is not None
    assert float(rotation.angles.grad.abs().sum()) > 0


def test_kmeans_finds_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centers.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen)
    found = kmeans(points, 3)
    distances = torch.cdist(centers, found).min(1).values
    assert float(distances.max()) < 0.2


def test_codes_decode_to_the_forward_output_and_gradients_pass_straight_through() -> None:
    torch.manual_seed(2)
    pq = ProductQuantizer(8, coarse=2, subspaces=4, codebook_size=4)
    with torch.no_grad():
        pq.rotation.angles.uniform_(-1, 1)  # type: ignore[union-attr]
    x = torch.randn(64, 8, requires_grad=True)
    pq.warm_start(x.detach())
    out = pq(x)
    coarse, codes = pq.encode(x.detach())
    torch.testing.assert_close(out.detach(), pq.decode(coarse, codes).detach(), atol=1e-5, rtol=0)
    assert codes.shape == (64, 4)
    assert int(codes.max()) < 4
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # straight-through: identity gradient


def test_warm_start_and_training_reduce_the_reconstruction_error() -> None:
    gen = torch.Generator().manual_seed(3)
    basis = torch.randn(4, 16, generator=gen)
    x = torch.randn(512, 4, generator=gen) @ basis + 0.05 * torch.randn(512, 16, generator=gen)  # low rank
    pq = ProductQuantizer(16, coarse=4, subspaces=4, codebook_size=16)

    def error() -> float:
        with torch.no_grad():
            return float((pq.decode(*pq.encode(x)) - x).pow(2).sum(-1).mean())

    cold = error()
    pq.warm_start(x)
    warm = error()
    assert warm < 0.5 * cold
    optimizer = torch.optim.Adam(pq.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        pq.loss(x).backward()
        optimizer.step()
    assert error() < warm  # rotation and codebooks learned from the reconstruction loss


def test_bad_configurations_and_inputs() -> None:
    with pytest.raises(ConfigError, match="must be divisible by the number of subspaces"):
        ProductQuantizer(10, subspaces=4)
    pq = ProductQuantizer(8, subspaces=2, codebook_size=32)
    with pytest.raises(ConfigError, match="too few items for the codebook size: 20 embeddings"):
        pq.warm_start(torch.randn(20, 8))
    with pytest.raises(ShapeError, match=r"expected embeddings of shape \(N, d=8\)"):
        pq(torch.randn(3, 7))


def test_ema_moves_centroids_and_codewords_halfway_to_their_assigned_means() -> None:
    pq = ProductQuantizer(2, coarse=1, subspaces=1, codebook_size=2, rotation=False, ema_decay=0.5)
    assert not pq.codebooks.requires_grad  # moved by the EMA, not by the optimizer
    with torch.no_grad():
        pq.centroids.zero_()
        pq.codebooks.copy_(torch.tensor([[[0.0, 0.0], [10.0, 10.0]]]))
    pq.train()
    pq.loss(torch.tensor([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]))
    # by hand: codeword 0 holds (1, 1) and (3, 3) (mean 2), codeword 1 holds (9, 9); the centroid holds all
    torch.testing.assert_close(pq.codebooks[0], torch.tensor([[1.0, 1.0], [9.5, 9.5]]))
    torch.testing.assert_close(pq.centroids[0], torch.full((2,), 13.0 / 6))
    pq.eval()
    before = pq.codebooks.clone()
    pq.loss(torch.tensor([[5.0, 5.0]]))
    assert torch.equal(pq.codebooks, before)  # eval mode never moves them
    with pytest.raises(ConfigError, match="ema_decay"):
        ProductQuantizer(2, subspaces=1, ema_decay=1.0)
