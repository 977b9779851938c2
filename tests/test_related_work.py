"""The related-work rows of Table 1 as plug-ins: each formula against numbers worked by hand.

R-DARTS (L2) is a method whose only change is the weight decay on w; FairDARTS is the sigmoid
activation plus the zero-one loss. The numbers in the comments are the hand computations.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_params
from darts.loops.search import make_optimizers
from darts.method.activations import ACTIVATIONS, Sigmoid, make_activation
from darts.method.registry import METHODS, R_DARTS_L2_GRID
from darts.method.regularizers import REGULARIZERS, ZeroOne, make_regularizer
from darts.space.primitives import PRIMITIVES
from stages.params import ParamsError, check_run, run_spec
from stages.search import search_settings


class FakeNet:
    """The slice of SearchNetwork a regularizer reads: activated weights per cell type."""

    def __init__(self, activation, alphas: dict[str, torch.Tensor]):
        self.activation, self._alphas = activation, alphas

    def weights(self) -> dict[str, torch.Tensor]:
        return {t: self.activation(a, torch.ones_like(a, dtype=torch.bool)) for t, a in self._alphas.items()}


# --- FairDARTS: sigmoid activation ---------------------------------------------------------

def test_sigmoid_weights_each_op_on_its_own():
    act = Sigmoid()
    ln3 = math.log(3.0)
    a = torch.tensor([[ln3, 0.0, -ln3], [ln3, ln3, ln3]], dtype=torch.float64)
    w = act(a, torch.ones_like(a, dtype=torch.bool))
    # σ(ln 3) = 3/4, σ(0) = 1/2, σ(−ln 3) = 1/4; a row need not sum to 1 (1.5 and 2.25 here)
    assert torch.allclose(w, torch.tensor([[0.75, 0.5, 0.25], [0.75, 0.75, 0.75]], dtype=torch.float64))
    assert w.sum(1).tolist() == pytest.approx([1.5, 2.25])


def test_sigmoid_space_and_start_follow_the_authors_code():
    act = make_activation("sigmoid")
    assert act.ops == tuple(p for p in PRIMITIVES if p != "none") and len(act.ops) == 7
    a = act.init_alpha(14, torch.Generator().manual_seed(0))
    assert a.shape == (14, 7) and torch.equal(a, torch.zeros(14, 7))  # every op at weight ½
    assert not act.prunes and not act.node_norm and "sigmoid" in ACTIVATIONS


# --- FairDARTS: zero-one loss --------------------------------------------------------------

def test_zero_one_loss_value_and_gradient_by_hand():
    w_n = torch.tensor([[0.5, 0.9]], dtype=torch.float64, requires_grad=True)
    w_r = torch.tensor([[0.1, 0.7]], dtype=torch.float64, requires_grad=True)
    net = FakeNet(lambda w, live: w, {"normal": w_n, "reduce": w_r})
    pen = ZeroOne().penalty(net, progress=0.3)
    # L01 = −(0² + 0.4² + 0.4² + 0.2²)/4 = −0.09; × w01 = 10 -> −0.9 (no ramp: progress is ignored)
    assert pen.item() == pytest.approx(-0.9)
    pen.backward()
    # ∂/∂w = −10 · 2(w − ½)/4 = −5(w − ½): 0, −2, +2, −1
    assert w_n.grad[0].tolist() == pytest.approx([0.0, -2.0])
    assert w_r.grad[0].tolist() == pytest.approx([2.0, -1.0])


def test_zero_one_through_the_sigmoid_by_hand():
    ln3 = math.log(3.0)
    a = torch.tensor([[ln3, 0.0]], dtype=torch.float64, requires_grad=True)
    net = FakeNet(Sigmoid(), {"normal": a})
    pen = make_regularizer("zero_one", weight=10.0).penalty(net, 0.0)
    # weights 3/4, 1/2: L01 = −(1/4)²/2 = −1/32; × 10 = −0.3125
    assert pen.item() == pytest.approx(-0.3125)
    pen.backward()
    # ∂/∂α = −10·2(¾ − ½)/2 · σ'(ln 3) = −2.5 · (¾·¼) = −0.46875 (pushed further up); at α = 0, 0
    assert a.grad[0].tolist() == pytest.approx([-0.46875, 0.0])


def test_zero_one_weight_is_the_papers_and_settable():
    assert ZeroOne().weight == 10.0 and "zero_one" in REGULARIZERS
    assert make_regularizer("zero_one", weight=2.5).weight == 2.5


# --- R-DARTS (L2): the raised weight decay on w ----------------------------------------------

def test_r_darts_sets_the_w_weight_decay_of_its_runs_only():
    p = tiny_params({"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
                     "RL2": {"method": "r_darts_l2", "activation": "softmax", "schedule": "alternate",
                             "regularization": "none"}})
    base = p["search"]["w_weight_decay"]
    cfg, _ = search_settings(p, run_spec(p, "DARTS", 0))
    assert cfg.w_weight_decay == base == 3e-4
    cfg, extra = search_settings(p, run_spec(p, "RL2", 0))
    assert cfg.w_weight_decay == 81e-4 == R_DARTS_L2_GRID[-1] == 27 * base  # the top of their grid
    p["search"]["r_darts_w_weight_decay"] = 9e-4
    assert search_settings(p, run_spec(p, "RL2", 0))[0].w_weight_decay == 9e-4
    assert search_settings(p, run_spec(p, "DARTS", 0))[0].w_weight_decay == base  # the others keep theirs
    p["search"]["r_darts_w_weight_decay"] = -1e-3
    with pytest.raises(ParamsError, match="r_darts_w_weight_decay=-0.001 is invalid"):
        search_settings(p, run_spec(p, "RL2", 0))


def test_r_darts_decay_enters_the_w_step_by_hand():
    p = tiny_params({"RL2": {"method": "r_darts_l2", "activation": "softmax", "schedule": "alternate",
                             "regularization": "none"}})
    cfg, _ = search_settings(p, run_spec(p, "RL2", 0))
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    w_opt, _ = make_optimizers([w], [a], cfg, fast=False)
    w.grad = torch.tensor([0.5, 0.0], dtype=torch.float64)
    w_opt.step()
    # SGD's first step (momentum buffer = d): w − lr·(g + λw), lr 0.025, λ = 0.0081
    # 1 − 0.025·(0.5 + 0.0081) = 0.9872975; −2 − 0.025·(0 − 0.0162) = −1.999595
    assert w.tolist() == pytest.approx([0.9872975, -1.999595], abs=1e-12)


def test_r_darts_is_a_bilevel_method_with_all_dimensions():
    m = METHODS["r_darts_l2"]
    assert m.trains_supernet and m.w_weight_decay_option in m.settings
    check_run("configs.X", {"method": "r_darts_l2", "activation": "softmax", "schedule": "alternate",
                            "regularization": "none"})


# --- FairDARTS: their threshold rule, recorded beside Π_S -----------------------------------

def test_threshold_rule_keeps_pi_s_choices_at_or_above_085_by_hand():
    from darts.space.projection import derive_cell, threshold_cell

    ops = Sigmoid().ops  # max_pool, avg_pool, skip, sep3, sep5, dil3, dil5
    w = torch.full((14, 7), 0.5, dtype=torch.float64)
    # node 0 (rows 0–1), node 1 (rows 2–4), node 2 (rows 5–8), node 3 (rows 9–13): row r of a node = source r
    for r, k, v in [(0, 3, 0.9), (1, 0, 0.8),        # node 0: Π_S takes both, only 0.9 passes
                    (2, 2, 0.95), (4, 6, 0.86),      # node 1: both pass
                    (6, 1, 0.6), (8, 5, 0.55),       # node 2: neither (the node keeps no input)
                    (13, 4, 0.85), (9, 0, 0.7)]:     # node 3: 0.85 passes (≥), 0.7 does not
        w[r, k] = v
    live = torch.ones(14, 7, dtype=torch.bool)
    assert derive_cell(w, live, ops)[:2] == [("sep_conv_3x3", 0), ("max_pool_3x3", 1)]
    assert threshold_cell(w, live, ops, 0.85) == [("sep_conv_3x3", 2, 0), ("skip_connect", 3, 0),
                                                  ("dil_conv_5x5", 3, 2), ("sep_conv_5x5", 5, 4)]
    assert Sigmoid.threshold == 0.85 and ACTIVATIONS["softmax"].threshold is None


# --- DARTS-: the auxiliary skip, outside α, β decaying linearly ------------------------------

def _no_op_cell(beta: float):
    from darts.nn.ops import as_shared, preprocess
    from darts.nn.supernet import SearchCell

    torch.manual_seed(0)
    cell = SearchCell(("skip_connect",), 4, 4, 4, reduction=False, reduction_prev=False, node_norm=False,
                      aux_skip=True).double().eval()  # eval: BN at running stats, a fixed map
    s0, s1 = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.zeros(14, 1, dtype=torch.float64)
    out = cell(s0, s1, w, [[] for _ in range(14)], torch.tensor(beta, dtype=torch.float64))
    p = preprocess(cell.pre0, as_shared(s0)) + preprocess(cell.pre1, as_shared(s1))
    return out, p


def test_aux_skip_alone_gives_the_hand_worked_node_sums():
    out, p = _no_op_cell(0.5)
    # no op is live, so each node is β·(sum of its inputs) through the auxiliary skips only:
    # n0 = β(p0+p1) = 0.5P; n1 = β(p0+p1+n0) = 0.5·1.5P = 0.75P; n2 = 0.5(1+0.5+0.75)P = 1.125P;
    # n3 = 0.5(1+0.5+0.75+1.125)P = 1.6875P, with P = pre0(s0) + pre1(s1)
    for i, f in enumerate((0.5, 0.75, 1.125, 1.6875)):
        assert torch.allclose(out[:, 4 * i:4 * (i + 1)], f * p, atol=1e-12)
    out0, _ = _no_op_cell(0.0)
    assert torch.count_nonzero(out0) == 0  # β = 0: the branch is gone, as at the end of DARTS-


def test_beta_decays_linearly_per_epoch_and_only_with_the_option():
    from darts.nn.supernet import SearchNetwork

    net = SearchNetwork(make_activation("softmax"), C=4, n_classes=3, layers=3, aux_skip=True)
    assert net.aux_beta.item() == 1.0  # the start of the search
    for epoch, beta in [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25)]:  # epochs = 4: 1 − e/4
        net.set_progress(epoch / 4)
        assert net.aux_beta.item() == beta
    plain = SearchNetwork(make_activation("softmax"), C=4, n_classes=3, layers=3)
    plain.set_progress(0.5)
    assert "aux_beta" not in plain.state_dict() and not any(".aux." in k for k in plain.state_dict())
    assert not any(n.startswith("alpha") for n, _ in net.named_parameters() if ".aux." in n)  # outside α
    assert METHODS["darts_minus"].network_options == {"aux_skip": True}


# --- NASP: forward through ā = prox_C1(α), gradient to α, α clipped into [0, 1] -------------

def test_nasp_forward_is_one_hot_and_the_gradient_goes_straight_to_alpha():
    from darts.method.activations import Proximal

    a = torch.tensor([[0.2, 0.7, 0.5], [0.9, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    w = Proximal()(a, torch.ones(2, 3, dtype=torch.bool))
    assert w.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # exactly ā: each edge's largest α
    c = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    (c * w).sum().backward()
    assert a.grad.tolist() == c.tolist()  # ∂L/∂α = ∂L/∂ā (also for the ops ā leaves out)
    assert torch.equal(Proximal().for_projection(a.detach(), None), a.detach())  # Π_S reads α


def test_nasp_alpha_is_clipped_into_its_box_after_a_step():
    from darts.nn.supernet import SearchNetwork

    net = SearchNetwork(make_activation("nasp"), C=4, n_classes=3, layers=3)
    a0 = net.alpha_normal.detach()
    assert a0.shape == (14, 8) and (a0 - 0.5).abs().max() < 0.01  # ½ + 10⁻³·N(0, 1)
    with torch.no_grad():
        net.alpha_normal[0, :3] = torch.tensor([1.2, -0.3, 0.4])
        net.alpha_reduce[5, 7] = 7.0
    assert net.prune() is None  # nothing pruned, but prox_C2 applied
    assert net.alpha_normal[0, :3].tolist() == pytest.approx([1.0, 0.0, 0.4])
    assert net.alpha_reduce[5, 7].item() == 1.0
    soft = SearchNetwork(make_activation("softmax"), C=4, n_classes=3, layers=3)
    with torch.no_grad():
        soft.alpha_normal[0, 0] = 3.0
    soft.prune()
    assert soft.alpha_normal[0, 0].item() == 3.0  # no box: untouched
