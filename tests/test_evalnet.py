"""The DARTS evaluation network: parameter count, shapes, aux head and drop-path."""
from __future__ import annotations

import pytest
import torch

import darts.nn.evalnet as evalnet
from darts.nn.evalnet import EvalNetwork, count_params_m, drop_masks, node_sum
from darts.nn.ops import Identity
from darts.space.primitives import DARTS_V2


def tiny(auxiliary: bool = True) -> EvalNetwork:
    torch.manual_seed(0)
    return EvalNetwork(DARTS_V2, C=4, n_classes=10, layers=3, auxiliary=auxiliary)


def test_darts_v2_param_count_matches_darts():
    # DARTS reports 3.3M; its count_parameters_in_MB gives 3.349342 for this genotype
    model = EvalNetwork(DARTS_V2, C=36, n_classes=10, layers=20, auxiliary=True)
    assert abs(count_params_m(model) - 3.349342) < 1e-6
    aux = sum(p.numel() for p in model.auxiliary_head.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert aux > 0 and total / 1e6 == pytest.approx(3.349342 + aux / 1e6)
    no_aux = EvalNetwork(DARTS_V2, C=36, n_classes=10, layers=20, auxiliary=False)
    assert count_params_m(no_aux) == count_params_m(model)


def test_reduction_cells_and_widths():
    model = EvalNetwork(DARTS_V2, C=36, layers=20)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
    assert model.classifier.in_features == 4 * 4 * 36
    # the head sits after cell 13, the second reduction cell itself (as in DARTS)
    assert model.auxiliary_head.features[0].in_channels == 4 * 4 * 36


@pytest.mark.parametrize("size", [32, 16])
def test_shapes_and_aux_only_in_training(size):
    model = tiny()
    x = torch.randn(3, 3, size, size)
    model.train()
    logits, aux = model(x)
    assert logits.shape == (3, 10) and aux is not None and aux.shape == (3, 10)
    model.eval()
    logits, aux = model(x)
    assert logits.shape == (3, 10) and aux is None


def test_no_aux_head():
    model = tiny(auxiliary=False).train()
    logits, aux = model(torch.randn(2, 3, 16, 16))
    assert aux is None and model.auxiliary_head is None


def test_aux_head_pooling_choice():
    """32×32 images reach the head at 8×8 (DARTS pool); 16×16 ones at 4×4 (adaptive)."""
    head = evalnet.AuxiliaryHeadCIFAR(8, 10).eval()
    for side in (8, 4, 5, 12):
        assert head(torch.randn(2, 8, side, side)).shape == (2, 10)
    x = torch.randn(2, 8, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(torch.relu(x), 5, stride=3)
    expected = head.classifier(head.features(pooled).flatten(1))
    assert torch.allclose(head(x), expected)


def test_drop_path_randomness_only_in_training():
    model = tiny()
    x = torch.randn(4, 3, 16, 16)
    model.drop_path_prob = 0.5
    model.train()
    torch.manual_seed(1)
    a, _ = model(x)
    torch.manual_seed(2)
    b, _ = model(x)
    assert not torch.allclose(a, b)
    torch.manual_seed(1)
    a2, _ = model(x)
    assert torch.equal(a, a2)  # the randomness is the global torch RNG
    model.eval()
    torch.manual_seed(1)
    c, _ = model(x)
    torch.manual_seed(2)
    d, _ = model(x)
    assert torch.equal(c, d)


def test_no_drop_path_when_prob_zero():
    model = tiny().train()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(1)
    a, _ = model(x)
    torch.manual_seed(2)
    b, _ = model(x)
    assert torch.equal(a, b)


def test_identity_ops_never_dropped(monkeypatch):
    """DARTS_V2, layers=3: normal cell has 6 non-identity ops, each reduce cell 5."""
    masks_used: list[bool] = []
    real = evalnet.node_sum

    def spy(a, mask_a, b, mask_b):
        masks_used.extend((mask_a is not None, mask_b is not None))
        return real(a, mask_a, b, mask_b)

    model = tiny()
    n_identity = sum(isinstance(op, Identity) for cell in model.cells for op in cell._ops)
    assert n_identity == 2 + 3 + 3
    monkeypatch.setattr(evalnet, "node_sum", spy)
    model.drop_path_prob = 0.3
    model.train()(torch.randn(2, 3, 16, 16))
    assert sum(masks_used) == 6 + 5 + 5 and len(masks_used) == 3 * 8
    flags = [isinstance(op, Identity) for cell in model.cells for op in cell._ops]
    assert masks_used == [not f for f in flags]  # the mask goes with its op, in op order
    masks_used.clear()
    model.eval()(torch.randn(2, 3, 16, 16))
    assert not any(masks_used) and len(masks_used) == 3 * 8


def test_drop_masks_numerics():
    torch.manual_seed(0)
    p = 0.3
    m = drop_masks(3, torch.ones(20000, 2, 3, 3), p)
    assert m.shape == (3, 20000, 1, 1, 1)
    # per op and sample: 0 or 1/keep, kept with probability keep; ops drawn independently
    assert torch.equal(torch.unique(m), torch.tensor([0.0, 1 / (1 - p)]))
    kept = (m > 0).float()
    assert kept.mean().item() == pytest.approx(1 - p, abs=0.01)
    for k in range(3):
        assert kept[k].mean().item() == pytest.approx(1 - p, abs=0.015)
    both = (kept[0] * kept[1]).mean().item()
    assert both == pytest.approx((1 - p) ** 2, abs=0.015)  # independent across ops
    assert m.mean().item() == pytest.approx(1.0, abs=0.02)  # expectation preserved


def test_node_sum_numbers_and_gradients():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 5, 5, requires_grad=True)
    ma = torch.tensor([0.0, 2.0, 2.0, 0.0]).view(4, 1, 1, 1)
    mb = torch.tensor([2.0, 2.0, 0.0, 0.0]).view(4, 1, 1, 1)
    for mask_a, mask_b in ((None, None), (ma, None), (None, mb), (ma, mb)):
        ea = a if mask_a is None else a * mask_a
        eb = b if mask_b is None else b * mask_b
        out = node_sum(a, mask_a, b, mask_b)
        assert torch.equal(out, ea + eb)
        g = torch.randn_like(out)
        ga, gb = torch.autograd.grad(out, (a, b), g)
        assert torch.equal(ga, g if mask_a is None else g * mask_a)
        assert torch.equal(gb, g if mask_b is None else g * mask_b)
    a0, b0 = a.detach().clone(), b.detach().clone()
    node_sum(a, ma, b, mb)
    assert torch.equal(a, a0) and torch.equal(b, b0)  # the op outputs are left as they were


def test_gradients_flow_through_aux_and_main():
    model = tiny().train()
    model.drop_path_prob = 0.2
    logits, aux = model(torch.randn(2, 3, 16, 16))
    (logits.sum() + aux.sum()).backward()
    assert model.stem[0].weight.grad is not None
    assert model.auxiliary_head.classifier.weight.grad is not None


def test_ops_reading_one_state_share_its_relu_and_pools(monkeypatch):
    """DARTS_V2's reduce cell max-pools state 1 three times and state 0 twice: two pools per
    reduce cell; its normal cell feeds sep_convs from states 0 and 1: one ReLU per state
    for them (drop-path still draws a mask per op); a cell's output, preprocessed by the
    next two cells, is ReLU'd once."""
    pools, relus = [], []
    real_pool, real_relu = torch.nn.MaxPool2d.forward, torch.nn.functional.relu
    monkeypatch.setattr(torch.nn.MaxPool2d, "forward", lambda self, x: pools.append(1) or real_pool(self, x))
    monkeypatch.setattr("darts.nn.ops.F.relu", lambda x, *a, **k: relus.append(x) or real_relu(x, *a, **k))
    net = EvalNetwork(DARTS_V2, C=8, n_classes=10, layers=3, auxiliary=False)
    net.train()
    net.drop_path_prob = 0.2
    net(torch.randn(4, 3, 16, 16))
    # layers=3: cell 0 normal, cells 1 and 2 reduce
    assert len(pools) == 2 * 2  # per reduce cell max_pool(s0) and max_pool(s1), not 5 pools
    # preprocessing: one ReLU per state preprocessed (the stem's output feeds 3 preprocessings,
    # cell 0's output 2, cell 1's 1), not one per preprocessing (6); the normal cell: relu(s0),
    # relu(s1), relu(s2) for its ops and the 5 sep_convs' inner ReLUs (13 unshared)
    assert len(relus) == 3 + 3 + 5
