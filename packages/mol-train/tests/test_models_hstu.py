"""HSTUEncoder against a loop-by-loop transcription of the paper's equations, and its time bias."""

from __future__ import annotations

import math

import pytest
import torch

from mol_train.models import HSTUEncoder
from mol_train.models._relative_bias import time_buckets

D, L, MAX_LEN, H, DQK, DV = 6, 5, 7, 2, 3, 4


def _model(seed: int = 0) -> HSTUEncoder:
    torch.manual_seed(seed)
    model = HSTUEncoder(
        dim=D,
        max_len=MAX_LEN,
        num_blocks=2,
        num_heads=H,
        attention_dim=DQK,
        linear_dim=DV,
        num_time_buckets=128,
    ).eval()
    with torch.no_grad():  # make the biases large enough to matter
        for block in model.blocks:
            block.relative_bias.position_weights.normal_(0.0, 1.0)
            block.relative_bias.time_weights.normal_(0.0, 1.0)
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, L, D, generator=gen)
    valid = torch.tensor([[False, False, True, True, True], [True] * L])
    timestamps = 978_300_000 + torch.randint(0, 10**6, (2, L), generator=gen).sort(dim=1).values
    return x, valid, timestamps


def _layer_norm(v: torch.Tensor) -> torch.Tensor:
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    return (v - mean) / math.sqrt(float(var) + 1e-6)


def _silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def _bucket(gap: int) -> int:
    return min(math.floor(math.log(max(abs(gap), 1)) / 0.301), 128)


def _naive(
    model: HSTUEncoder,
    x: torch.Tensor,
    valid: torch.Tensor,
    ts: torch.Tensor | None,
    next_ts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Python loops over (b, i, j, h), straight from the equations in docs/mol-train-models.md."""
    x, valid = x.double(), valid.tolist()
    batch, length, _ = x.shape
    pos = model.inputs.position.detach().double()[MAX_LEN - length :]
    h = torch.zeros_like(x)
    for b in range(batch):
        for t in range(length):
            if valid[b][t]:
                h[b, t] = x[b, t] * math.sqrt(D) + pos[t]
    for block in model.blocks:
        w = block.uvqk.detach().double()
        pw = block.relative_bias.position_weights.detach().double()
        tw = block.relative_bias.time_weights.detach().double()
        out_w, out_b = block.out.weight.detach().double(), block.out.bias.detach().double()
        new = torch.zeros_like(h)
        for b in range(batch):
            proj = [torch.nn.functional.silu(_layer_norm(h[b, t]) @ w) for t in range(length)]
            u = [p[: H * DV] for p in proj]
            v = [p[H * DV : 2 * H * DV] for p in proj]
            q = [p[2 * H * DV : 2 * H * DV + H * DQK] for p in proj]
            k = [p[2 * H * DV + H * DQK :] for p in proj]
            for i in range(length):
                if not valid[b][i]:
                    continue
                attended = torch.zeros(H * DV, dtype=torch.float64)
                for head in range(H):
                    for j in range(i + 1):
                        if not valid[b][j]:
                            continue
                        logit = float(
                            q[i][head * DQK : (head + 1) * DQK] @ k[j][head * DQK : (head + 1) * DQK]
                        )
                        logit += float(pw[i - j])
                        if ts is not None:
                            if i + 1 < length:
                                query_time = int(ts[b, i + 1])
                            elif next_ts is not None:
                                query_time = int(next_ts[b])
                            else:
                                query_time = int(ts[b, i])
                            logit += float(tw[_bucket(query_time - int(ts[b, j]))])
                        weight = _silu(logit) / MAX_LEN
                        attended[head * DV : (head + 1) * DV] += weight * v[j][head * DV : (head + 1) * DV]
                new[b, i] = h[b, i] + out_w @ (_layer_norm(attended) * u[i]) + out_b
        h = new
    return h


@pytest.mark.parametrize("with_times", [False, True])
def test_matches_a_naive_transcription_of_the_equations(with_times: bool) -> None:
    model = _model()
    x, valid, ts = _batch()
    times = ts if with_times else None
    expected = _naive(model, x, valid, times)
    torch.testing.assert_close(model(x, valid, times).double(), expected, rtol=1e-4, atol=1e-5)


def test_next_timestamps_set_the_last_query_time() -> None:
    model = _model()
    x, valid, ts = _batch()
    next_ts = ts[:, -1] + torch.tensor([50_000, 7])
    out = model(x, valid, ts, next_ts)
    torch.testing.assert_close(out.double(), _naive(model, x, valid, ts, next_ts), rtol=1e-4, atol=1e-5)
    base = model(x, valid, ts)
    torch.testing.assert_close(out[:, :-1], base[:, :-1])  # only the last position asks about "next"
    assert not torch.allclose(out[:, -1], base[:, -1], atol=1e-4)


def test_time_bias_follows_timestamps_and_is_absent_without_them() -> None:
    model = _model()
    x, valid, ts = _batch()
    with_times = model(x, valid, ts)
    without = model(x, valid)
    assert not torch.allclose(with_times[valid], without[valid], atol=1e-4)
    shifted = ts.clone()
    shifted[:, 2:] += 10**7  # a long gap in the middle of both histories
    assert not torch.allclose(model(x, valid, shifted)[valid], with_times[valid], atol=1e-4)
    # a uniform shift of all times changes no gap, hence nothing
    torch.testing.assert_close(model(x, valid, ts + 12345), with_times)
    # without timestamps the time table is never read
    with torch.no_grad():
        for block in model.blocks:
            block.relative_bias.time_weights.normal_(0.0, 5.0)
    torch.testing.assert_close(model(x, valid), without)
    with torch.no_grad():
        for block in model.blocks:
            block.relative_bias.time_weights.zero_()
    torch.testing.assert_close(model(x, valid, ts), without)


@pytest.mark.parametrize("t", [1, 2])
def test_output_at_t_depends_on_times_up_to_t_plus_one_only(t: int) -> None:
    model = _model()
    x, valid, ts = _batch()
    base = model(x, valid, ts)
    later = ts.clone()
    later[:, t + 2 :] += 10**6
    torch.testing.assert_close(model(x, valid, later)[:, : t + 1], base[:, : t + 1])
    nxt = ts.clone()
    nxt[:, t + 1] += 10**6  # the next item's time is the query time of position t
    assert not torch.allclose(model(x, valid, nxt)[1, t], base[1, t], atol=1e-4)


@pytest.mark.parametrize(
    ("gap", "bucket"),
    [
        (0, 0),
        (1, 0),
        (-1, 0),
        (2, 2),
        (3, 3),
        (60, 13),
        (-3600, 27),
        (86_400, 37),
        (31_536_000, 57),
        (2**62, 128),
    ],
)
def test_time_buckets_by_hand(gap: int, bucket: int) -> None:
    # bucket = floor(ln(max(|gap|, 1)) / 0.301), clamped to 128: ln 2/.301 = 2.30, ln 60/.301 = 13.6,
    # ln 3600/.301 = 27.2, ln 86400/.301 = 37.8, ln(365 days)/.301 = 57.4, ln 2^62/.301 = 142.8
    query = torch.tensor([[gap]], dtype=torch.int64)
    key = torch.zeros(1, 1, dtype=torch.int64)
    assert time_buckets(query, key, 128).item() == bucket


def test_paper_defaults_are_hstu_large() -> None:
    model = HSTUEncoder()
    assert (model.dim, model.num_blocks, model.num_heads, model.attention_dim, model.linear_dim) == (
        50,
        8,
        2,
        25,
        25,
    )
    assert (model.max_len, model.dropout, model.attention_dropout, model.num_time_buckets) == (
        201,
        0.2,
        0.0,
        128,
    )
    assert model.blocks[0].uvqk.shape == (50, 2 * (2 * 25 + 2 * 25))
    # per block: W_uvqk 50 * 200, f2 50 * 50 + 50, 201 position + 129 time weights; plus 201 x 50 positions
    assert sum(p.numel() for p in model.parameters()) == 8 * (10_000 + 2_550 + 201 + 129) + 201 * 50
