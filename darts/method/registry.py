"""The search methods a study config can name, in one registry (timm's `register_model` idea).

A `configs` entry names its method (`method:`, default `darts`). A method says which run
dimensions a config of it may set, the values it fixes for the others (so runs.csv and the
figures still get an activation, schedule and regularization), and what it can do: whether it
trains a supernet, and, when it does not, how it sets the supernet's α. The stages ask these
capabilities; they never compare a method's name.

- ``darts``: the paper's bilevel search, activation × schedule × regularization × order
  (``darts.loops.search.Searcher``).
- ``random``: the random-sampling baseline (Li & Talwalkar 2019; Yang et al. 2020): a genotype
  drawn uniformly from S by ``darts.method.sampling``, then the same discretize → retrain → test.
  It takes no search step, so its search cost is zero.
- ``r_darts_l2``: R-DARTS (L2) (Zela et al. 2020, "Understanding and robustifying DARTS"): the
  same bilevel search with a stronger L2 (weight decay) on w, the inner objective. Their reported
  row picks the best of four searches at L2 ∈ {3, 9, 27, 81}·10⁻⁴ by validation performance (4 ×
  DARTS' cost); here one search per row, at ``search.r_darts_w_weight_decay`` (default: the top of
  their grid). README "Related-work rows".
- ``fixed``: a given genotype (``genotype:``, a published name such as DARTS_V2 or a genotype's
  text), retrained and tested with the same protocol: a study's calibration row
  (``darts.method.fixed_genotype``). Like ``random`` it takes no search step.
- ``darts_minus``: DARTS- (Chu et al. 2021, "DARTS-: robustly stepping out of performance
  collapse without indicators"): the same bilevel search with an auxiliary skip connection on
  every edge, outside α, scaled by β decaying linearly from 1 toward 0 over the search
  (``network_options``: ``darts.nn.supernet``'s ``aux_skip``).

A method may add params.search keys (``settings``: key -> ``darts.method.interfaces.Setting``, or a
plain default for a number >= 0; the one place the default is written) and name the one that replaces ``search.w_weight_decay`` for its runs
(``w_weight_decay_option``), as an activation names its own α weight decay.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from darts.loops.history import History
from darts.method.fixed_genotype import resolve as resolve_genotype
from darts.method.fixed_genotype import set_genotype_alpha
from darts.method.sampling import draw_alpha

#: the run dimensions a config entry may set (which ones, per method: Method.dimensions)
DIMENSIONS = ("activation", "schedule", "regularization", "order")


@dataclass(frozen=True)
class Method:
    """One search method: its name, what a config of it sets, and its capabilities."""

    name: str
    summary: str
    dimensions: tuple[str, ...]                 # config keys it takes (besides `method`)
    fixed: dict[str, object] = field(default_factory=dict)  # values of the dimensions it does not take
    optional: tuple[str, ...] = ("order",)      # of `dimensions`, those with a default
    # None: a supernet is trained by the bilevel Searcher. Else: how α is set instead, as
    # f(supernet, seed); the search then takes no step and costs nothing.
    set_alpha: Callable | None = None
    # params.search keys this method adds -> Setting or plain default (validated and hashed like the others)
    settings: dict[str, object] = field(default_factory=dict)
    # the key of `settings` whose value is this method's weight decay on w (None: search.w_weight_decay)
    w_weight_decay_option: str | None = None
    # keyword options of the search network its runs build (DARTS-: {"aux_skip": True})
    network_options: dict[str, object] = field(default_factory=dict)
    # config keys it requires besides `dimensions` (fixed: `genotype`), passed to set_alpha by
    # name -> the check of a value (raises ValueError, one line, on a bad one)
    options: dict[str, Callable[[object], object]] = field(default_factory=dict)

    @property
    def trains_supernet(self) -> bool:
        return self.set_alpha is None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


register_method(Method(
    "darts", "bilevel search of α and w (the paper: activation × schedule × regularization × order)",
    dimensions=DIMENSIONS))
register_method(Method(
    "random", "random sampling: a genotype drawn uniformly from S, trained with the same protocol",
    dimensions=(), optional=(),
    fixed={"activation": "softmax", "schedule": "none", "regularization": "none", "order": 1},
    set_alpha=draw_alpha))
#: R-DARTS (L2): their grid of L2 factors on w is {3, 9, 27, 81}·10⁻⁴ (3·10⁻⁴ is DARTS'); one search
#: here takes the strongest, 81·10⁻⁴ = 27 × DARTS (see the module docstring for the selection step)
R_DARTS_L2_GRID = (3e-4, 9e-4, 27e-4, 81e-4)
register_method(Method(
    "r_darts_l2", "R-DARTS (L2): the bilevel search with a raised weight decay on w (Zela et al. 2020)",
    dimensions=DIMENSIONS, settings={"r_darts_w_weight_decay": R_DARTS_L2_GRID[-1]},
    w_weight_decay_option="r_darts_w_weight_decay"))
register_method(Method(
    "fixed", "a given genotype (a published name or its text), trained with the same protocol",
    dimensions=(), optional=(),
    fixed={"activation": "softmax", "schedule": "none", "regularization": "none", "order": 1},
    set_alpha=set_genotype_alpha, options={"genotype": resolve_genotype}))
register_method(Method(
    "darts_minus", "DARTS-: the bilevel search with an auxiliary skip on every edge, β from 1 to 0 (Chu et al. 2021)",
    dimensions=DIMENSIONS, network_options={"aux_skip": True}))


class Untrained:
    """The search state of a method that sets α instead of training (``Method.set_alpha``):
    done from the start, with the same attributes the search stage reads from a Searcher."""

    done = True

    def __init__(self, net, set_alpha: Callable, seed: int, **options):
        set_alpha(net, seed, **options)
        self.net, self.epoch, self.step, self.seconds = net, 0, 0, 0.0
        self.history = History(ops=list(net.ops))
        self.history.record_alpha(0, 0, net.weights())

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["net"])
