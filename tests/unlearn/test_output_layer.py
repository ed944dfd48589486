"""Class removal's output-layer path: selection on the layer producing the logits, the
curvature of that layer's parameters alone (dense float64 reference), and the step search
scored from the layer's recorded inputs."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import closed_form, data_for, dense_reference, tiny_cnn, tiny_mlp
from torch import nn

import lightning_influence as li
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import trainable_params
from lightning_influence.solve.vectors import as_masks
from lightning_influence.unlearn.output_layer import OutputLayerInputs, moving_module
from lightning_influence.unlearn.scoring import SplitScorer, predict_logits
from lightning_influence.unlearn.selection import output_layer


class HeadFirst(nn.Module):
    """The head is registered before the body: the output layer is found by running it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.body = nn.Linear(5, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


class Scaled(HeadFirst):
    """Logits are the head's output times 2: recorded head outputs are not the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def _data(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def test_output_layer_is_the_last_to_run_not_the_last_registered():
    torch.manual_seed(0)
    model = HeadFirst()
    assert list(dict(model.named_children())) == ["head", "body"]
    assert output_layer(model, _data()) == "head"


@pytest.mark.parametrize("min_units", [1, 2, 3])
def test_output_selection_moves_only_the_head_with_at_least_min_units(min_units):
    torch.manual_seed(0)
    model, data = HeadFirst(), _data()
    masks = li.select_parameters(
        model, data, method="highest_gradients", ratio=0.05, layers="output", min_units=min_units
    )
    assert set(masks) == {"head.weight", "head.bias"}
    assert int(masks["head.bias"].sum()) == min_units
    assert bool(masks["head.weight"].all(dim=1).eq(masks["head.bias"]).all())  # whole rows


def test_highest_gradient_output_unit_is_the_forgotten_class():
    """d loss / d z_c = p_c − 1 on class-c samples: its magnitude bounds every other unit's."""
    torch.manual_seed(0)
    model = HeadFirst()
    x, _ = _data(40)
    masks = li.select_parameters(
        model, (x, torch.full((40,), 2)), method="highest_gradients", layers="output"
    )
    assert masks["head.bias"].nonzero().flatten().tolist() == [2]


def test_named_layers_and_bad_names():
    torch.manual_seed(0)
    model, data = HeadFirst(), _data()
    masks = li.select_parameters(model, data, method="highest_outputs", layers=["body"])
    assert set(masks) == {"body.weight", "body.bias"}
    with pytest.raises(ValueError, match="not trainable Linear/Conv layers.*choose from"):
        li.select_parameters(model, data, layers=["fc9"])
    with pytest.raises(ValueError, match="'all', 'output'"):
        li.select_parameters(model, data, layers="last")
    with pytest.raises(ValueError, match="selection.layers"):
        li.UnlearnCallback(forget_classes=[0], selection={"layers": "last"})
    with pytest.raises(ValueError, match="selection.layers"):
        li.UnlearnCallback(forget_classes=[0], selection={"layers": [3]})


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn])
def test_curvature_of_the_output_layer_alone_matches_the_dense_sub_block(make):
    """influence(params=P): GIF on H_PP (the rest of the network held fixed) and g_P."""
    model = make()
    loss = nn.functional.cross_entropy
    x, y = data_for(model, 40, seed=1)
    hess, forget = [(x[:15], y[:15]), (x[15:30], y[15:30])], (x[30:], y[30:])
    head = output_layer(model, forget)
    masks = li.select_parameters(model, forget, ratio=0.34, layers="output", loss_fn=loss)
    H, g = dense_reference(model, loss, hess, [forget])
    assert torch.linalg.eigvalsh(H)[0] < -1e-3, "the full Hessian must be indefinite"
    names = list(masks)
    assert all(n.startswith(head + ".") for n in names)
    in_p = V.flatten(
        {
            k: torch.full_like(p, k in names, dtype=torch.bool)
            for k, p in trainable_params(model).items()
        }
    )
    sel = V.flatten(as_masks(masks, trainable_params(model)))
    P = in_p.nonzero().flatten()
    ref = torch.zeros_like(g)
    ref[P] = closed_form("gif", H[P][:, P], g[P], sel[P])
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    delta, report = li.influence(
        model, loss, hess, forget, selection=masks, solver="dense", params=names
    )
    got = torch.zeros_like(g)
    got[P] = V.flatten({k: delta[k] for k in names})
    assert set(delta) == set(names)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-8
    krylov, _ = li.influence(
        model, loss, hess, forget, selection=masks, params=names, tol=1e-12, max_iter=500
    )
    got[P] = V.flatten({k: krylov[k] for k in names})
    assert ((got - ref).norm() / ref.norm()).item() < 1e-6
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert report.total_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="outside params="):
        li.influence(model, loss, hess, forget, selection=masks, solver="dense", params=names[:1])


def test_recorded_inputs_score_exactly_like_the_model_while_only_the_head_moves():
    torch.manual_seed(0)
    model = HeadFirst().eval()
    x, y = _data(300, seed=3)
    scorer = SplitScorer(x, y, y == 1)
    with scorer.only_moving(model, "head") as recorded:
        assert recorded
        with torch.no_grad():
            model.head.weight.add_(torch.randn_like(model.head.weight))
        cheap = scorer.score(model)
    assert scorer.score(model) == cheap  # the ordinary forward pass, after the block
    assert scorer._recorded is None


def test_recording_refused_when_the_head_output_is_not_the_logits():
    torch.manual_seed(0)
    model = Scaled().eval()
    x, _ = _data(20)
    assert OutputLayerInputs.record(model, "head", predict_logits, x) is None
    assert moving_module(model, ["head.weight", "head.bias"]) == "head"
    assert moving_module(model, ["head.weight", "body.bias"]) is None


def test_predict_logits_chunks_equal_one_pass():
    """Scoring forwards run in chunks (128 rows on CPU by default); the logits are the
    one-pass logits whatever the chunk."""
    from lightning_influence.unlearn.scoring import CPU_CHUNK

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(300, 3)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    full = model(x).detach()
    for size, passes in ((None, -(-300 // CPU_CHUNK)), (7, 43), (1000, 1)):
        calls.clear()
        assert torch.allclose(predict_logits(model, x, size), full, atol=1e-6)
        assert len(calls) == passes, (size, len(calls))
