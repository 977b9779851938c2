"""PR (eq. 6) and ADMM (eqs. 7–11) penalties: values and gradients against hand computations."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from darts.method.activations import CRB, Softmax
from darts.method.interfaces import configured
from darts.method.regularizers import ADMM, REGULARIZER_TYPES, NoRegularizer, Proximity, make_regularizer
from darts.nn.supernet import SearchNetwork
from darts.space.primitives import N_EDGES

# Hand-designed CRB α (14×7). Normal: 0.1 everywhere, 0.6 on CHOICE_N; reduce: 0.2, 0.9 on CHOICE_R.
# Each node has exactly two rows with a raised entry, so Π_S = one-hot(CHOICE) (see test_constraints).
CHOICE_N = [(0, 3), (1, 0), (2, 1), (4, 6), (5, 2), (8, 4), (9, 5), (13, 3)]
CHOICE_R = [(0, 0), (1, 0), (3, 2), (4, 2), (6, 1), (7, 3), (10, 4), (12, 6)]
# ‖W − Π‖²: normal 8·(0.6−1)² + 90·0.1² = 1.28 + 0.9 = 2.18; reduce 8·0.1² + 90·0.2² = 0.08 + 3.6 = 3.68
NORM_N, NORM_R = math.sqrt(2.18), math.sqrt(3.68)


def one_hot(choice, k=7, dtype=torch.float64):
    m = torch.zeros(N_EDGES, k, dtype=dtype)
    for r, op in choice:
        m[r, op] = 1.0
    return m


def design(base, high, choice, k=7):
    a = torch.full((N_EDGES, k), base, dtype=torch.float64)
    for r, op in choice:
        a[r, op] = high
    return a


class FakeNet:
    """The slice of SearchNetwork the regularizers use."""

    def __init__(self, activation, alphas, live=None):
        self.activation, self.ops = activation, activation.ops
        self._alphas = {t: a.clone().requires_grad_(True) for t, a in alphas.items()}
        k = len(self.ops)
        self._live = live or {t: torch.ones(N_EDGES, k, dtype=torch.bool) for t in alphas}

    def alphas(self):
        return self._alphas

    def live(self):
        return self._live

    def weights(self):
        return {t: self.activation(a, self._live[t]) for t, a in self._alphas.items()}


def crb_net(**kw):
    return FakeNet(CRB(), {"normal": design(0.1, 0.6, CHOICE_N), "reduce": design(0.2, 0.9, CHOICE_R)}, **kw)


def alpha_grads(net, value):
    return torch.autograd.grad(value, list(net.alphas().values()))


# ------------------------------------------------------------------ PR -------------
def test_pr_value_crb_hand_computed():
    net = crb_net()
    pen = Proximity(rho=0.1).penalty(net, 0.5)
    assert pen.item() == pytest.approx(0.5 * 0.1 / 2 * (NORM_N + NORM_R), rel=1e-12)


def test_pr_gradient_crb_hand_computed():
    net = crb_net()
    g_n, g_r = alpha_grads(net, Proximity(rho=0.1).penalty(net, 0.5))
    # d/dα c·ρ/2·‖W − Π‖ = c·ρ/2·(W − Π)/‖W − Π‖ (clamp has slope 1 inside [0, 1], Π constant)
    exp_n = torch.full((N_EDGES, 7), 0.1, dtype=torch.float64)
    for r, op in CHOICE_N:
        exp_n[r, op] = -0.4
    exp_r = torch.full((N_EDGES, 7), 0.2, dtype=torch.float64)
    for r, op in CHOICE_R:
        exp_r[r, op] = -0.1
    assert torch.allclose(g_n, 0.025 * exp_n / NORM_N, rtol=1e-12, atol=0)
    assert torch.allclose(g_r, 0.025 * exp_r / NORM_R, rtol=1e-12, atol=0)


def test_pr_softmax_value_and_gradient_vs_autograd_of_formula():
    g = torch.Generator().manual_seed(0)
    choice_n = [(r, op + 1) for r, op in CHOICE_N]  # shift past `none`
    choice_r = [(r, op + 1) for r, op in CHOICE_R]
    a_n = 1e-3 * torch.randn(N_EDGES, 8, generator=g, dtype=torch.float64) + 2.0 * one_hot(choice_n, 8)
    a_r = 0.3 * torch.randn(N_EDGES, 8, generator=g, dtype=torch.float64) + 3.0 * one_hot(choice_r, 8)
    net = FakeNet(Softmax(), {"normal": a_n, "reduce": a_r})
    pen = Proximity(rho=0.1).penalty(net, 0.3)
    # the formula written out with Π as a hand-made constant
    an, ar = a_n.clone().requires_grad_(True), a_r.clone().requires_grad_(True)
    ref = 0.3 * 0.1 / 2 * (torch.linalg.vector_norm(torch.softmax(an, -1) - one_hot(choice_n, 8))
                           + torch.linalg.vector_norm(torch.softmax(ar, -1) - one_hot(choice_r, 8)))
    assert pen.item() == pytest.approx(ref.item(), rel=1e-12)
    got = alpha_grads(net, pen)
    exp = torch.autograd.grad(ref, [an, ar])
    for a, b in zip(got, exp):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-15)
        assert a.abs().max() > 1e-4


def test_pr_c_is_clipped_to_unit_interval():
    net = crb_net()
    pr = Proximity(rho=0.1)
    full = 0.1 / 2 * (NORM_N + NORM_R)
    assert pr.penalty(net, -0.3).item() == 0.0
    assert pr.penalty(net, 0.0).item() == 0.0
    assert pr.penalty(net, 1.0).item() == pytest.approx(full, rel=1e-12)
    assert pr.penalty(net, 7.0).item() == pytest.approx(full, rel=1e-12)
    assert Proximity(rho=0.4).penalty(net, 0.25).item() == pytest.approx(0.25 * 0.2 * (NORM_N + NORM_R), rel=1e-12)


def test_pr_zero_with_finite_zero_gradient_in_s():
    net = FakeNet(CRB(), {"normal": one_hot(CHOICE_N), "reduce": one_hot(CHOICE_R)})
    pen = Proximity().penalty(net, 0.8)
    assert pen.item() == 0.0
    for g in alpha_grads(net, pen):
        assert torch.isfinite(g).all() and not g.any()


def test_pr_ignores_pruned_ops():
    live = {t: torch.ones(N_EDGES, 7, dtype=torch.bool) for t in ("normal", "reduce")}
    live["normal"][3, 5] = False
    net = crb_net(live=live)
    with torch.no_grad():
        net.alphas()["normal"][3, 5] = 0.99  # would be the best op of row 3 if it were live
    pen = Proximity(rho=0.1).penalty(net, 1.0)
    # the pruned entry weighs 0 and Π ignores it: its 0.1² drops out of the normal norm
    assert pen.item() == pytest.approx(0.05 * (math.sqrt(2.18 - 0.01) + NORM_R), rel=1e-12)
    assert alpha_grads(net, pen)[0][3, 5] == 0.0


def test_pr_on_real_search_network():
    net = SearchNetwork(CRB(), C=4, n_classes=3, layers=3)
    with torch.no_grad():
        net.alpha_normal.copy_(design(0.1, 0.6, CHOICE_N))
        net.alpha_reduce.copy_(design(0.2, 0.9, CHOICE_R))
    pen = Proximity(rho=0.1).penalty(net, 0.5)
    assert pen.item() == pytest.approx(0.025 * (NORM_N + NORM_R), rel=1e-6)
    g = torch.autograd.grad(pen, net.arch_parameters())
    assert g[0][0, 3].item() == pytest.approx(0.025 * -0.4 / NORM_N, rel=1e-5)


def test_no_regularizer_and_factory():
    assert NoRegularizer().penalty(crb_net(), 0.5) is None
    assert isinstance(make_regularizer("pr", rho=0.3), Proximity) and make_regularizer("pr", rho=0.3).rho == 0.3
    a = make_regularizer("admm", rho=0.2, n=9, discount=1.0)
    assert (a.rho, a.n, a.discount) == (0.2, 9, 1.0)
    with pytest.raises(ValueError, match="admm"):
        make_regularizer("l1")
    # from params.search keys: each regularizer takes the keys its class names, and only those
    search = {"pr_rho": 0.3, "admm_rho": 0.2, "admm_n": 9, "admm_discount": 1.0, "zero_one_weight": 2.5}
    a = configured(REGULARIZER_TYPES, "admm", search)
    assert (a.rho, a.n, a.discount) == (0.2, 9, 1.0) and configured(REGULARIZER_TYPES, "pr", search).rho == 0.3
    assert configured(REGULARIZER_TYPES, "zero_one", search).weight == 2.5
    with pytest.raises(ValueError, match="unknown regularization 'l1'; valid: none, pr, admm, zero_one"):
        configured(REGULARIZER_TYPES, "l1", search, "regularization")


# ------------------------------------------------------------------ ADMM -----------
def test_admm_penalty_zero_at_start_with_zero_gradient():
    net = crb_net()
    admm = ADMM(rho=0.1, n=3, discount=0.8)
    pen = admm.penalty(net, 0.0)
    assert pen.item() == 0.0
    for g in alpha_grads(net, pen):
        assert torch.isfinite(g).all() and not g.any()
    w = net.weights()
    assert torch.equal(admm.z["normal"], w["normal"].detach()) and not admm.u["normal"].any()


def _set_alpha(net, t, value):
    with torch.no_grad():
        net.alphas()[t].copy_(value)


def test_admm_updates_every_n_steps_exactly():
    net = crb_net()
    admm = ADMM(rho=0.1, n=3, discount=0.8)
    admm.penalty(net, 0.0)
    z0 = {t: z.clone() for t, z in admm.z.items()}
    # steps 1, 2: α moves, z and u stay
    for step in (1, 2):
        _set_alpha(net, "normal", design(0.1, 0.6, CHOICE_N) + 0.01 * step)
        assert admm.after_alpha_step(net) == {}
        assert torch.equal(admm.z["normal"], z0["normal"]) and not admm.u["normal"].any()
    # step 3 at the designed α: z = Π(act(α + 0)) = one-hot, u = 0.8·0 + act(α) − z
    _set_alpha(net, "normal", design(0.1, 0.6, CHOICE_N))
    assert admm.after_alpha_step(net) == {"admm_update": 3}
    assert torch.equal(admm.z["normal"], one_hot(CHOICE_N))
    assert torch.equal(admm.z["reduce"], one_hot(CHOICE_R))
    u_n = design(0.1, 0.6 - 1.0, CHOICE_N)  # 0.1 off the choice, −0.4 on it
    u_r = design(0.2, 0.9 - 1.0, CHOICE_R)
    assert torch.allclose(admm.u["normal"], u_n, rtol=0, atol=1e-15)
    assert torch.allclose(admm.u["reduce"], u_r, rtol=0, atol=1e-15)
    # penalty: act − z + u = 2·(act − z) → ρ/2 · 2·(‖·‖_n + ‖·‖_r)
    pen = admm.penalty(net, 0.5)
    assert pen.item() == pytest.approx(0.05 * 2 * (NORM_N + NORM_R), rel=1e-12)
    g_n, _ = alpha_grads(net, pen)
    assert torch.allclose(g_n, 0.05 * (2 * u_n) / (2 * NORM_N), rtol=1e-12, atol=0)
    # steps 4, 5: nothing; step 6: second update with α_normal raised to 0.9 on the choice
    z1, u1 = copy.deepcopy(admm.z), copy.deepcopy(admm.u)
    _set_alpha(net, "normal", design(0.1, 0.9, CHOICE_N))
    for _ in (4, 5):
        assert admm.after_alpha_step(net) == {}
        assert all(torch.equal(admm.z[t], z1[t]) and torch.equal(admm.u[t], u1[t]) for t in z1)
    assert admm.after_alpha_step(net) == {"admm_update": 6}
    # α + u1: normal 0.5 on the choice, 0.2 elsewhere; reduce 0.8 / 0.4 → Π unchanged
    assert torch.equal(admm.z["normal"], one_hot(CHOICE_N)) and torch.equal(admm.z["reduce"], one_hot(CHOICE_R))
    # u2 = 0.8·u1 + act(α) − z: normal 0.8·0.1 + 0.1 = 0.18 / 0.8·(−0.4) + 0.9 − 1 = −0.42;
    #                          reduce 0.8·0.2 + 0.2 = 0.36 / 0.8·(−0.1) + 0.9 − 1 = −0.18
    assert torch.allclose(admm.u["normal"], design(0.18, -0.42, CHOICE_N), rtol=0, atol=1e-15)
    assert torch.allclose(admm.u["reduce"], design(0.36, -0.18, CHOICE_R), rtol=0, atol=1e-15)
    # act − z + u: normal 0.28 / −0.52 → 90·0.0784 + 8·0.2704 = 9.2192; reduce 0.56 / −0.28 → 28.8512
    pen = admm.penalty(net, 0.9)
    assert pen.item() == pytest.approx(0.05 * (math.sqrt(9.2192) + math.sqrt(28.8512)), rel=1e-12)


def test_admm_default_period_is_10():
    net = crb_net()
    admm = ADMM()
    admm.penalty(net, 0.0)
    updates = [bool(admm.after_alpha_step(net)) for _ in range(25)]
    assert [i + 1 for i, u in enumerate(updates) if u] == [10, 20]
    assert (admm.rho, admm.discount) == (0.1, 0.8)


def test_admm_softmax_update_formula():
    g = torch.Generator().manual_seed(3)
    a = {t: 0.5 * torch.randn(N_EDGES, 8, generator=g, dtype=torch.float64) for t in ("normal", "reduce")}
    net = FakeNet(Softmax(), a)
    admm = ADMM(rho=0.1, n=1, discount=0.8)
    admm.penalty(net, 0.0)
    u_prev = {t: 0.01 * torch.randn(N_EDGES, 8, generator=g, dtype=torch.float64) for t in a}
    admm.u = {t: u.clone() for t, u in u_prev.items()}
    admm.after_alpha_step(net)
    from darts.space.projection import project
    live = torch.ones(N_EDGES, 8, dtype=torch.bool)
    for t in a:
        z = project(torch.softmax(a[t] + u_prev[t], -1), live, net.ops)
        assert torch.equal(admm.z[t], z)
        assert torch.allclose(admm.u[t], 0.8 * u_prev[t] + torch.softmax(a[t], -1) - z, rtol=0, atol=1e-15)
        assert admm.z[t][:, 0].sum() == 0  # never `none`


def test_admm_masked_entries_contribute_nothing():
    live = {t: torch.ones(N_EDGES, 7, dtype=torch.bool) for t in ("normal", "reduce")}
    live["normal"][3, 5] = live["normal"][11, 0] = False
    a_n = design(0.1, 0.6, CHOICE_N)
    a_n[3, 5] = a_n[11, 0] = 0.0  # as pruning leaves them
    net = FakeNet(CRB(), {"normal": a_n, "reduce": design(0.2, 0.9, CHOICE_R)}, live=live)
    admm = ADMM(rho=0.1, n=1, discount=0.8)
    admm.penalty(net, 0.0)
    admm.after_alpha_step(net)
    assert admm.u["normal"][3, 5] == 0.0 and admm.u["normal"][11, 0] == 0.0
    # 2·(act − z) with two entries of 0.1 gone: normal norm² 2.18 − 0.02
    expected = 0.05 * 2 * (math.sqrt(2.16) + NORM_R)
    assert admm.penalty(net, 0.0).item() == pytest.approx(expected, rel=1e-12)
    # garbage in z/u at masked entries and a positive α there change nothing
    admm.u["normal"][3, 5], admm.z["normal"][11, 0] = 5.0, -3.0
    with torch.no_grad():
        net.alphas()["normal"][3, 5] = 0.7
    pen = admm.penalty(net, 0.0)
    assert pen.item() == pytest.approx(expected, rel=1e-12)
    g_n = alpha_grads(net, pen)[0]
    assert g_n[3, 5] == 0.0 and g_n[11, 0] == 0.0 and g_n[0, 3] != 0.0


def test_admm_state_dict_round_trip():
    net = crb_net()
    admm = ADMM(rho=0.1, n=2, discount=0.8)
    admm.penalty(net, 0.0)
    for _ in range(3):
        admm.after_alpha_step(net)
    other = ADMM(rho=0.1, n=2, discount=0.8)
    other.load_state_dict(copy.deepcopy(admm.state_dict()))
    assert other.alpha_steps == 3
    assert other.penalty(net, 0.0).item() == admm.penalty(net, 0.0).item() > 0
    _set_alpha(net, "normal", design(0.1, 0.8, CHOICE_N))
    assert other.after_alpha_step(net) == admm.after_alpha_step(net) == {"admm_update": 4}
    assert all(torch.equal(other.u[t], admm.u[t]) for t in admm.u)
