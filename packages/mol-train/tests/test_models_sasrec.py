"""SASRecEncoder against a loop-by-loop transcription of the pre-LN causal transformer."""

from __future__ import annotations

import math

import torch

from mol_train.models import SASRecEncoder

D, L, MAX_LEN, H, F = 6, 5, 7, 2, 10


def _layer_norm(v: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    return (v - mean) / math.sqrt(
        float(var) + norm.eps
    ) * norm.weight.detach().double() + norm.bias.detach().double()


def _linear(v: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return layer.weight.detach().double() @ v + layer.bias.detach().double()


def _naive(model: SASRecEncoder, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Python loops over (b, i, j, head): softmax attention over the valid keys j <= i."""
    x, mask = x.double(), valid.tolist()
    batch, length, _ = x.shape
    pos = model.inputs.position.detach().double()[MAX_LEN - length :]
    h = torch.zeros_like(x)
    for b in range(batch):
        for t in range(length):
            if mask[b][t]:
                h[b, t] = x[b, t] * math.sqrt(D) + pos[t]
    dh = D // H
    for block in model.blocks:
        new = torch.zeros_like(h)
        for b in range(batch):
            qkv = [_linear(_layer_norm(h[b, t], block.attention_norm), block.qkv) for t in range(length)]
            for i in range(length):
                if not mask[b][i]:
                    continue
                attended = torch.zeros(D, dtype=torch.float64)
                for head in range(H):
                    sl = slice(head * dh, (head + 1) * dh)
                    keys = [j for j in range(i + 1) if mask[b][j]]
                    logits = [float(qkv[i][:D][sl] @ qkv[j][D : 2 * D][sl]) / math.sqrt(dh) for j in keys]
                    top = max(logits)
                    exps = [math.exp(v - top) for v in logits]
                    for j, e in zip(keys, exps, strict=True):
                        attended[sl] += e / sum(exps) * qkv[j][2 * D :][sl]
                mid = h[b, i] + _linear(attended, block.out)
                hidden = torch.relu(_linear(_layer_norm(mid, block.ffn_norm), block.ffn_in))
                new[b, i] = mid + _linear(hidden, block.ffn_out)
        h = new
    out = torch.zeros_like(h)
    for b in range(batch):
        for t in range(length):
            if mask[b][t]:
                out[b, t] = _layer_norm(h[b, t], model.final_norm)
    return out


def test_matches_a_naive_transcription_of_the_equations() -> None:
    torch.manual_seed(0)
    model = SASRecEncoder(dim=D, max_len=MAX_LEN, num_blocks=2, num_heads=H, ffn_dim=F).eval()
    with torch.no_grad():  # non-trivial norms and biases, so their use is checked too
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(0.5, 0.3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, L, D, generator=gen)
    valid = torch.tensor([[False, False, True, True, True], [True] * L])
    torch.testing.assert_close(model(x, valid).double(), _naive(model, x, valid), rtol=1e-4, atol=1e-5)


def test_timestamps_are_ignored() -> None:
    torch.manual_seed(0)
    model = SASRecEncoder(dim=D, max_len=MAX_LEN, num_blocks=1, num_heads=H, ffn_dim=F).eval()
    x = torch.randn(2, L, D)
    valid = torch.ones(2, L, dtype=torch.bool)
    ts = torch.randint(0, 10**9, (2, L))
    torch.testing.assert_close(model(x, valid, ts, ts[:, -1]), model(x, valid))


def test_paper_defaults_are_the_ml1m_baseline() -> None:
    model = SASRecEncoder()
    assert (model.dim, model.num_blocks, model.num_heads, model.ffn_dim, model.dropout) == (50, 2, 1, 50, 0.2)
    assert model.max_len == 201
    # per block: 2 LayerNorms 4 * 50, qkv 50 * 150 + 150, out 50 * 50 + 50, FFN 2 * (50 * 50 + 50);
    # plus the final LayerNorm and the 201 x 50 position table
    per_block = 200 + 7_650 + 2_550 + 2 * 2_550
    assert sum(p.numel() for p in model.parameters()) == 2 * per_block + 100 + 201 * 50
