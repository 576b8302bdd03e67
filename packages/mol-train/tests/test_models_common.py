"""Properties every query encoder must have: masking, causality, shapes, errors, determinism, export."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mol_core.errors import ConfigError, ShapeError
from mol_train.models import HSTUEncoder, SASRecEncoder

D, L, MAX_LEN = 8, 6, 8

Factory = Callable[[], nn.Module]


def _sasrec() -> nn.Module:
    return SASRecEncoder(dim=D, max_len=MAX_LEN, num_blocks=2, num_heads=2, ffn_dim=16, dropout=0.1)


def _hstu() -> nn.Module:
    return HSTUEncoder(
        dim=D, max_len=MAX_LEN, num_blocks=2, num_heads=2, attention_dim=4, linear_dim=4, dropout=0.1
    )


ENCODERS = [pytest.param(_sasrec, id="sasrec"), pytest.param(_hstu, id="hstu")]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-aligned histories of lengths 4, 6 and 1 (left padding), with increasing timestamps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, L, D, generator=gen)  # (B, L, D)
    lengths = torch.tensor([4, 6, 1])
    valid = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # (B, L)
    gaps = torch.randint(1, 100_000, (3, L), generator=gen)
    timestamps = 1_000_000_000 + gaps.cumsum(dim=1)  # (B, L)
    return x, valid, timestamps


def _eval(factory: Factory) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


@pytest.mark.parametrize("factory", ENCODERS)
def test_output_shape_and_zeros_at_padding(factory: Factory) -> None:
    x, valid, ts = _batch()
    out = _eval(factory)(x, valid, ts)
    assert out.shape == (3, L, D)
    assert torch.all(out[~valid] == 0)
    assert torch.all(out[valid].abs().sum(-1) > 0)


@pytest.mark.parametrize("factory", ENCODERS)
def test_padded_inputs_do_not_influence_valid_positions(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    base = model(x, valid, ts)
    x2, ts2 = x.clone(), ts.clone()
    x2[~valid] = torch.randn(int((~valid).sum()), D) * 100.0
    x2[0, 0] = float("nan")  # padding may even hold garbage
    ts2[~valid] = torch.randint(0, 10**12, (int((~valid).sum()),))
    out = model(x2, valid, ts2)
    assert torch.equal(out[valid], base[valid])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("factory", ENCODERS)
def test_extra_left_padding_changes_nothing(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    pad = 2
    x_long = torch.cat([torch.randn(3, pad, D), x], dim=1)
    valid_long = torch.cat([torch.zeros(3, pad, dtype=torch.bool), valid], dim=1)
    ts_long = torch.cat([torch.zeros(3, pad, dtype=torch.int64), ts], dim=1)
    torch.testing.assert_close(model(x_long, valid_long, ts_long)[:, pad:], model(x, valid, ts))


@pytest.mark.parametrize("factory", ENCODERS)
@pytest.mark.parametrize("t", [1, 3, 4])
def test_causal_future_items_do_not_influence_the_past(factory: Factory, t: int) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    base = model(x, valid, ts)
    x2 = x.clone()
    x2[:, t + 1 :] += torch.randn(3, L - t - 1, D)
    out = model(x2, valid, ts)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    # the perturbation is visible downstream, so the check above can fail
    assert not torch.allclose(out[1, t + 1 :], base[1, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("factory", ENCODERS)
def test_rows_are_encoded_independently(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    full = model(x, valid, ts)
    for b in range(3):
        single = model(x[b : b + 1], valid[b : b + 1], ts[b : b + 1])
        torch.testing.assert_close(single[0], full[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ENCODERS)
def test_deterministic_under_a_seed(factory: Factory) -> None:
    x, valid, ts = _batch()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = factory().train()
        outs.append(model(x, valid, ts))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(8)
    other = factory().train()(x, valid, ts)
    assert not torch.equal(outs[0], other)


@pytest.mark.parametrize("factory", ENCODERS)
def test_dropout_only_in_training(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    assert torch.equal(model(x, valid, ts), model(x, valid, ts))
    model.train()
    assert not torch.equal(model(x, valid, ts), model(x, valid, ts))


@pytest.mark.parametrize("factory", ENCODERS)
def test_gradients_reach_every_parameter(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    x.requires_grad_(True)
    model(x, valid, ts)[valid].pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert x.grad is not None
    assert torch.all(x.grad[~valid] == 0)


@pytest.mark.parametrize("factory", ENCODERS)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda x, v, t: (x[..., :-1], v, t), f"(B, L, {D})"),
        (lambda x, v, t: (x[0], v, t), f"(B, L, {D})"),
        (lambda x, v, t: (x.to(torch.int64), v, t), "floating point"),
        (lambda x, v, t: (x, v[:, 1:], t), f"(B, L) = (3, {L})"),
        (lambda x, v, t: (x, v.float(), t), "bool"),
        (lambda x, v, t: (x, v, t[:2]), f"(B, L) = (3, {L})"),
        (lambda x, v, t: (x, v, t.to(torch.int32)), "int64"),
        (
            lambda x, v, t: (
                torch.randn(3, MAX_LEN + 1, D),
                torch.ones(3, MAX_LEN + 1, dtype=torch.bool),
                None,
            ),
            "max_len",
        ),
    ],
)
def test_bad_input_shapes_raise_shape_error(
    factory: Factory, change: Callable[..., tuple[torch.Tensor | None, ...]], expected: str
) -> None:
    model = _eval(factory)
    with pytest.raises(ShapeError, match=re.escape(expected)):
        model(*change(*_batch()))


@pytest.mark.parametrize("factory", ENCODERS)
def test_bad_next_timestamps_raise_shape_error(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    with pytest.raises(ShapeError, match="without timestamps"):
        model(x, valid, None, ts[:, -1])
    with pytest.raises(ShapeError, match=r"\(B,\) = \(3,\)"):
        model(x, valid, ts, ts[:2, -1])


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SASRecEncoder, {"dim": 0}, "dim"),
        (SASRecEncoder, {"dim": 8, "num_heads": 3}, "num_heads must divide dim"),
        (SASRecEncoder, {"num_blocks": 0}, "num_blocks"),
        (SASRecEncoder, {"dropout": 1.0}, "dropout"),
        (SASRecEncoder, {"max_len": True}, "max_len"),
        (HSTUEncoder, {"attention_dim": 0}, "attention_dim"),
        (HSTUEncoder, {"linear_dim": -1}, "linear_dim"),
        (HSTUEncoder, {"num_heads": 2.0}, "num_heads"),
        (HSTUEncoder, {"attention_dropout": -0.1}, "attention_dropout"),
        (HSTUEncoder, {"num_time_buckets": 0}, "num_time_buckets"),
    ],
)
def test_bad_configs_raise_config_error(cls: type[nn.Module], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("factory", ENCODERS)
def test_torch_export_with_dynamic_batch_and_length_matches_eager(factory: Factory) -> None:
    model = _eval(factory)
    x, valid, ts = _batch()
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=1, max=MAX_LEN)
    dims = {0: batch, 1: length}
    program = torch.export.export(model, (x, valid, ts), dynamic_shapes=(dims, dims, dims))
    exported = program.module()
    for seed, (b, n) in enumerate([(3, L), (5, L), (2, 4), (7, MAX_LEN)]):
        x2, valid2, ts2 = _batch(seed)
        x2 = torch.randn(b, n, D)
        valid2 = torch.rand(b, n) < 0.7
        valid2[:, -1] = True
        ts2 = torch.randint(0, 10**9, (b, n)).sort(dim=1).values
        torch.testing.assert_close(exported(x2, valid2, ts2), model(x2, valid2, ts2))


def test_hstu_exports_with_and_without_time_inputs() -> None:
    model = _eval(_hstu)
    x, valid, ts = _batch()
    batch = torch.export.Dim("batch", min=1, max=1024)
    no_times = torch.export.export(model, (x, valid), dynamic_shapes=({0: batch}, {0: batch})).module()
    torch.testing.assert_close(no_times(x[:2], valid[:2]), model(x[:2], valid[:2]))
    with_next = torch.export.export(
        model, (x, valid, ts, ts[:, -1]), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch})
    ).module()
    later = ts[:, -1] + 999
    torch.testing.assert_close(with_next(x, valid, ts, later), model(x, valid, ts, later))


@pytest.mark.integration
def test_saved_programs_load_and_run_without_mol_train(tmp_path: Path) -> None:
    x, valid, ts = _batch()
    batch = torch.export.Dim("batch", min=1, max=1024)
    for name, factory in (("sasrec", _sasrec), ("hstu", _hstu)):
        model = _eval(factory)
        program = torch.export.export(
            model, (x, valid, ts), dynamic_shapes=({0: batch}, {0: batch}, {0: batch})
        )
        torch.export.save(program, tmp_path / f"{name}.pt2")
        torch.save(
            {"x": x[:2], "valid": valid[:2], "ts": ts[:2], "out": model(x[:2], valid[:2], ts[:2])},
            tmp_path / f"{name}.io",
        )
    script = (
        "import sys\n"
        "sys.modules['mol_train'] = None  # any import of mol_train now fails\n"
        "import torch\n"
        "for name in ('sasrec', 'hstu'):\n"
        "    io = torch.load(sys.argv[1] + f'/{name}.io')\n"
        "    module = torch.export.load(sys.argv[1] + f'/{name}.pt2').module()\n"
        "    torch.testing.assert_close(module(io['x'], io['valid'], io['ts']), io['out'])\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
