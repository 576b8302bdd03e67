"""The reference recipe's MoL options against hand computations, and the fused gated mixture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mol_core import ConfigError
from mol_core.similarity import MoLSimilarity, SwiGLU, similarity_from_config, similarity_to_config
from mol_core.similarity.gating import glu_silu_scores

D_Q, D_X, D = 12, 10, 8


def recipe_mol(**overrides: object) -> MoLSimilarity:
    kwargs: dict[str, object] = {
        "query_input_dim": D_Q,
        "item_input_dim": D_X,
        "query_components": 3,
        "item_components": 2,
        "component_dim": D,
        "gating_hidden_dim": 16,
        "query_layer_norm": True,
        "query_hidden_dim": 20,
        "item_dropout": 0.1,
        "user_components": 1,
        "user_input_dim": D,
        "user_direct": True,
        "user_dropout": 0.5,
        "init": "xavier",
    }
    kwargs.update(overrides)
    return MoLSimilarity(**kwargs)  # type: ignore[arg-type]


@torch.no_grad()
def test_swiglu_is_silu_of_one_half_times_the_other() -> None:
    torch.manual_seed(0)
    layer = SwiGLU(5, 3)
    x = torch.randn(4, 5)
    full = x @ layer.linear.weight.T + layer.linear.bias  # (4, 6)
    torch.testing.assert_close(layer(x), F.silu(full[:, :3]) * full[:, 3:])


@torch.no_grad()
def test_query_side_by_hand() -> None:
    """LayerNorm without affine -> SwiGLU -> linear for the sequence components; the user embedding itself
    as the last component; every component L2-normalised; gating from the normalised representation."""
    torch.manual_seed(1)
    sim = recipe_mol().eval()
    query_repr, user_repr = 3.0 + 2.0 * torch.randn(4, D_Q), torch.randn(4, D)
    got = sim.query_side(query_repr, user_repr)
    mean = query_repr.mean(dim=1, keepdim=True)
    var = query_repr.var(dim=1, unbiased=False, keepdim=True)
    normed = (query_repr - mean) / torch.sqrt(var + 1e-6)
    swiglu, out = sim.query_proj[0], sim.query_proj[1]  # type: ignore[index]
    sequence = out(swiglu(normed)).view(4, 2, D)
    want = torch.cat([sequence, user_repr.view(4, 1, D)], dim=1)
    torch.testing.assert_close(got.embeddings, want / want.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(got.gating, sim.gating.query_mlp(normed))
    assert sim.user_proj is None


def test_user_and_item_dropout_act_in_training_only() -> None:
    torch.manual_seed(2)
    sim = recipe_mol(item_dropout=0.5)
    items, users, queries = torch.randn(6, D_X), torch.randn(4, D), torch.randn(4, D_Q)
    sim.train()
    a = sim.item_side(items).embeddings
    b = sim.item_side(items).embeddings
    assert not torch.allclose(a, b)
    qa = sim.query_side(queries, users).embeddings[:, -1]
    qb = sim.query_side(queries, users).embeddings[:, -1]
    assert not torch.allclose(qa, qb)
    sim.eval()
    torch.testing.assert_close(sim.item_side(items).embeddings, sim.item_side(items).embeddings)
    torch.testing.assert_close(
        sim.query_side(queries, users).embeddings[:, -1], users / users.norm(dim=-1, keepdim=True)
    )


def test_xavier_init_zeroes_the_item_and_gating_biases() -> None:
    torch.manual_seed(3)
    sim = recipe_mol(query_input_dim=256, item_input_dim=256, gating_hidden_dim=256)
    zero = [
        sim.item_proj.bias,
        *(
            m.bias
            for mlp in (sim.gating.query_mlp, sim.gating.item_mlp, sim.gating.logits_mlp)
            for m in (mlp.hidden, mlp.out)
        ),
    ]
    assert all(float(b.detach().abs().max()) == 0.0 for b in zero)
    # Xavier-normal: std sqrt(2 / (fan_in + fan_out)); the item projection is (Px * d = 16, 256)
    std = float(sim.item_proj.weight.std())
    assert std == pytest.approx((2.0 / (256 + 16)) ** 0.5, rel=0.1)
    default = MoLSimilarity(query_input_dim=256, item_input_dim=256)
    assert float(default.item_proj.bias.abs().max()) > 0.0  # PyTorch's default init


def test_user_direct_needs_the_component_width() -> None:
    with pytest.raises(ConfigError, match=r"user_input_dim must be user_components \* component_dim = 8"):
        recipe_mol(user_input_dim=5)
    with pytest.raises(ConfigError, match="init must be one of"):
        recipe_mol(init="kaiming")
    with pytest.raises(ConfigError, match="query_hidden_dim"):
        recipe_mol(query_hidden_dim=-1)


@torch.no_grad()
def test_recipe_options_survive_the_config_round_trip() -> None:
    torch.manual_seed(4)
    sim = recipe_mol().eval()
    rebuilt = similarity_from_config(similarity_to_config(sim)).eval()
    assert isinstance(rebuilt, MoLSimilarity)
    assert (rebuilt.query_layer_norm, rebuilt.query_hidden_dim, rebuilt.user_direct) == (True, 20, True)
    assert rebuilt.item_dropout == pytest.approx(0.1)
    rebuilt.load_state_dict(sim.state_dict())
    queries, users, items = torch.randn(3, D_Q), torch.randn(3, D), torch.randn(5, D_X)
    torch.testing.assert_close(
        rebuilt.score_pairs(rebuilt.query_side(queries, users), rebuilt.item_side(items)),
        sim.score_pairs(sim.query_side(queries, users), sim.item_side(items)),
    )


@torch.no_grad()
def test_fused_scores_equal_the_weights_mixture() -> None:
    """score_pairs (the fused mixture) equals mixing with the explicit softmax weights."""
    torch.manual_seed(5)
    sim = recipe_mol().eval()
    query = sim.query_side(torch.randn(4, D_Q), torch.randn(4, D))
    items = sim.item_side(torch.randn(7, D_X))
    fused = sim.score_pairs(query, items)
    explicit, weights = sim.score_pairs_with_weights(query, items)
    torch.testing.assert_close(fused, explicit)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(4, 7))


def test_fused_scores_in_training_are_mixtures_and_follow_the_dropout_mask() -> None:
    """With dropout each score is a convex combination of its pair's logits; with dropout 0 it equals the
    eval-mode score; a bf16 MLP stays close to float32."""
    torch.manual_seed(6)
    logits = 10 * torch.randn(3, 5, 6)
    query_features, item_features = torch.randn(3, 1, 6), torch.randn(3, 5, 6)
    mlp = [torch.randn(16, 6) / 3, torch.zeros(16), torch.randn(6, 16) / 4, torch.zeros(6)]
    args = (logits, query_features, item_features, *mlp)
    dropped = glu_silu_scores(*args, 0.5, True)
    assert bool(
        (dropped >= logits.amin(dim=-1) - 1e-4).all() and (dropped <= logits.amax(dim=-1) + 1e-4).all()
    )
    torch.testing.assert_close(glu_silu_scores(*args, 0.0, True), glu_silu_scores(*args, 0.5, False))
    gate = F.silu(
        query_features * item_features + F.linear(F.silu(F.linear(logits, mlp[0], mlp[1])), mlp[2], mlp[3])
    )
    want = (torch.softmax(gate, dim=-1) * logits).sum(dim=-1)
    torch.testing.assert_close(glu_silu_scores(*args, 0.2, False), want)
    bf16 = glu_silu_scores(*args, 0.0, False, torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, want, atol=0.1, rtol=0.02)


def test_scores_backend_applies_in_training_only() -> None:
    torch.manual_seed(7)
    sim = recipe_mol(gating_dropout=0.0, item_dropout=0.0, user_dropout=0.0)
    query = sim.query_side(torch.randn(4, D_Q), torch.randn(4, D))
    items = sim.item_side(torch.randn(7, D_X))
    sim.gating.set_scores_backend(mlp_dtype=torch.bfloat16)
    sim.eval()
    eval_scores = sim.score_pairs(query, items)
    sim.gating.set_scores_backend()
    torch.testing.assert_close(eval_scores, sim.score_pairs(query, items))  # eval ignores the backend
    sim.train()
    float32 = sim.score_pairs(query, items)
    sim.gating.set_scores_backend(mlp_dtype=torch.bfloat16)
    bf16 = sim.score_pairs(query, items)
    assert not torch.equal(bf16, float32)
    torch.testing.assert_close(bf16, float32, atol=0.1, rtol=0.02)


@pytest.mark.parametrize("shared_items", [False, True], ids=["per-row items", "shared items"])
def test_blocked_kernel_equals_eager_autograd(shared_items: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked function's scores and every gradient equal autograd through the eager function (the
    same dropout mask under the same seed), with blocks smaller than the input."""
    from mol_core.similarity import gating_blocked

    monkeypatch.setattr(gating_blocked, "BLOCK_PAIRS", 60)
    torch.manual_seed(8)
    rows, num_x, p, h = 9, 7, 6, 16
    logits = (10 * torch.randn(rows, num_x, p)).requires_grad_()
    query_features = torch.randn(rows, 1, p, requires_grad=True)
    item_features = torch.randn(1 if shared_items else rows, num_x, p, requires_grad=True)
    mlp = [
        (torch.randn(h, p) / 3).requires_grad_(),
        torch.randn(h, requires_grad=True),
        (torch.randn(p, h) / 4).requires_grad_(),
        torch.randn(p, requires_grad=True),
    ]
    inputs = [logits, query_features, item_features, *mlp]
    upstream = torch.randn(rows, num_x)
    results = []
    for fn in (glu_silu_scores, gating_blocked.glu_silu_scores_blocked):
        torch.manual_seed(9)
        scores = fn(*inputs, 0.3, True)
        results.append((scores, torch.autograd.grad((scores * upstream).sum(), inputs)))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, atol=1e-4, rtol=1e-4)


def test_unknown_scores_kernel_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"kernel must be one of 'eager', 'compiled', 'blocked', 'fused'"):
        recipe_mol().gating.set_scores_backend(kernel="triton")
