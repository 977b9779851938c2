"""Regularization of the α loss toward the discrete set S (paper §3.3–3.4).

A regularizer returns a penalty added to the validation cross-entropy of each α step
(never to the w loss) and may update its own state after the step. All norms are the
paper's unsquared L2 norms, summed over the normal and reduction α; the projection
Π_S is treated as a constant (no gradient flows through the discrete choice).
"""
from __future__ import annotations

import torch

from darts.method.interfaces import Setting
from darts.space.projection import project


def _l2(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ with gradient 0 (not NaN) at x = 0, without reading a value (no sync on a GPU).

    sqrt's gradient at 0 is infinite, and a ``where`` passes 0·∞ = NaN from the branch it
    did not take, so sqrt only ever sees a positive argument (the outer ``where`` drops it at 0)."""
    sq = (x * x).sum()
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


class NoRegularizer:
    """No penalty; also the base of stateless regularizers."""

    name = "none"
    #: constructor argument -> the params.search key that sets it (``configured`` reads them)
    options: dict[str, str] = {}

    def penalty(self, net, progress: float) -> torch.Tensor | None:
        return None

    def after_alpha_step(self, net) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


class Proximity(NoRegularizer):
    """PR, eq. 6: c·(ρp/2)·‖act(α) − Π_S(act(α))‖₂, c = fraction of the search done."""

    name = "pr"
    #: params.search keys it reads -> defaults and valid values (the one place they are written)
    settings = {"pr_rho": Setting(0.1, "positive")}
    options = {"rho": "pr_rho"}

    def __init__(self, rho: float = settings["pr_rho"].default):
        self.rho = rho

    def penalty(self, net, progress: float) -> torch.Tensor:
        c = min(max(progress, 0.0), 1.0)
        total = 0.0
        for t, w in net.weights().items():
            target = project(w.detach(), net.live()[t], net.ops)
            total = total + _l2(w - target)
        return c * self.rho / 2.0 * total


class ADMM:
    """ADMM, eqs. 7–11: penalty (ρa/2)·‖act(α) − z + u‖₂ on the live ops.

    z starts as act(α) and u as 0. Every `n` α steps:
    z ← Π_S(act(α + u)) (eq. 9) and u ← λu·u + act(α) − z (eq. 11). z and u live in the
    activated space (they are compared with act(α) in the penalty), so the α of eq. 11
    is read as act(α); see README "Deviations and choices".
    """

    name = "admm"
    settings = {"admm_rho": Setting(0.1, "positive"), "admm_n": Setting(10, "positive_int"),
                "admm_discount": Setting(0.8, "unit")}
    options = {"rho": "admm_rho", "n": "admm_n", "discount": "admm_discount"}

    def __init__(self, rho: float = settings["admm_rho"].default, n: int = settings["admm_n"].default,
                 discount: float = settings["admm_discount"].default):
        self.rho, self.n, self.discount = rho, n, discount
        self.z: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.alpha_steps = 0

    def _init(self, net) -> None:
        if not self.z:
            self.z = {t: w.detach().clone() for t, w in net.weights().items()}
            self.u = {t: torch.zeros_like(w) for t, w in self.z.items()}

    def penalty(self, net, progress: float) -> torch.Tensor:
        self._init(net)
        total = 0.0
        for t, w in net.weights().items():
            live = net.live()[t]
            total = total + _l2((w - self.z[t] + self.u[t]) * live)
        return self.rho / 2.0 * total

    @torch.no_grad()
    def after_alpha_step(self, net) -> dict:
        self._init(net)
        self.alpha_steps += 1
        if self.alpha_steps % self.n:
            return {}
        for t, a in net.alphas().items():
            live = net.live()[t]
            act = net.activation(a, live)
            self.z[t] = project(net.activation(a + self.u[t], live), live, net.ops)
            self.u[t] = (self.discount * self.u[t] + act - self.z[t]) * live
        return {"admm_update": self.alpha_steps}

    def state_dict(self) -> dict:
        return {"z": self.z, "u": self.u, "alpha_steps": self.alpha_steps}

    def load_state_dict(self, d: dict) -> None:
        self.z, self.u, self.alpha_steps = dict(d["z"]), dict(d["u"]), int(d["alpha_steps"])


class ZeroOne(NoRegularizer):
    """FairDARTS' zero-one loss (Chu et al. 2020, eq. 5): w01 · L01 with
    L01 = −(1/N)·Σᵢ (σ(αᵢ) − ½)², the mean over all N op weights of both cell types.

    With the sigmoid activation each op weight is on its own in (0, 1); L01 pushes every one
    away from ½ toward 0 or 1, so the supernet's weights say "in" or "out" before Π_S reads
    them (the discretization gap the paper's PR/ADMM also target). The authors' code computes
    it as −mse(cat(σ(α_normal), σ(α_reduce)), ½) with weight 10 (``--aux_loss_weight``), the
    paper's w01 = 10 for CIFAR-10; it reads the activated weights of the network, whatever the
    activation, and has no state. Unlike PR, no ramp: the weight is constant over the search.
    """

    name = "zero_one"
    settings = {"zero_one_weight": Setting(10.0)}
    options = {"weight": "zero_one_weight"}

    def __init__(self, weight: float = settings["zero_one_weight"].default):
        self.weight = weight

    def penalty(self, net, progress: float) -> torch.Tensor:
        w = torch.cat([w.reshape(-1) for w in net.weights().values()])
        return -self.weight * ((w - 0.5) ** 2).mean()


#: every regularizer by its params name (what `search.regularization` may say)
REGULARIZER_TYPES = {"none": NoRegularizer, "pr": Proximity, "admm": ADMM, "zero_one": ZeroOne}
REGULARIZERS = tuple(REGULARIZER_TYPES)


def make_regularizer(name: str, **kwargs):
    """The regularizer called ``name``, built with its own constructor arguments."""
    if name not in REGULARIZER_TYPES:
        raise ValueError(f"unknown regularization {name!r}; valid: {', '.join(REGULARIZERS)}")
    return REGULARIZER_TYPES[name](**kwargs)
