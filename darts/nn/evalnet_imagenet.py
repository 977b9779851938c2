"""DARTS' evaluation network for large images (``NetworkImageNet``), and choosing a network.

DARTS retrained its CIFAR-searched cells on 224×224 ImageNet in this network: three
stride-2 3×3 stem convolutions take the input to 1/8 before the cells, 14 cells, C=48,
an auxiliary head made for 7×7 maps. Built module for module as quark0/darts model.py's
``NetworkImageNet`` (same parameter count: DARTS_V2 4.718752M at 1000 classes), on the
cells of ``darts.nn.evalnet``, so a cell searched on small images can be retrained on large
ones. ``choose_network`` picks it or the CIFAR network from the image size.
"""
from __future__ import annotations

from torch import Tensor, nn

from darts.nn.evalnet import EvalNetwork
from darts.nn.ops import Shared
from darts.space.primitives import Genotype

NETWORKS = ("cifar", "imagenet")
#: retrain.network=auto takes the ImageNet network from this shorter image side on: there the
#: CIFAR network's full-resolution first third would cost >= 16x a CIFAR image's, while the
#: ImageNet network (1/32 of the input at its last cells) still ends on >= 4x4 maps
AUTO_IMAGENET_SIDE = 128


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS' auxiliary classifier of the ImageNet network, for a 7×7 input (224×224 images).

    As DARTS' (quark0 model.py): no BatchNorm after the 768-channel conv. AvgPool2d(5, 2)
    maps 7–8 pixels to 2×2; other sizes (other image sizes) are pooled adaptively to 2×2.
    """

    def __init__(self, c: int, n_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)  # DARTS: inplace=True, which would also edit s1
        self.pool = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
        self.small_pool = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Sequential(
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        x = self.pool(x) if all(n in (7, 8) for n in x.shape[-2:]) else self.small_pool(x)
        return self.classifier(self.features(x).flatten(1))


class EvalNetworkImageNet(EvalNetwork):
    """NetworkImageNet: two stems (three stride-2 3×3 convs: 1/8 of the input), ``layers``
    cells (two reductions), global pool, linear; DARTS used C=48, 14 cells at 224×224.

    The first cell's ``s0`` is the first stem's output, twice the second's resolution,
    hence ``reduction_prev`` for it (a FactorizedReduce), as in DARTS.
    """

    kind = "imagenet"

    def __init__(self, genotype: Genotype, C: int = 48, n_classes: int = 1000, layers: int = 14,
                 auxiliary: bool = True, in_channels: int = 3):
        nn.Module.__init__(self)
        self._check(C, layers, in_channels)
        if C % 2:
            raise ValueError(f"EvalNetworkImageNet needs an even C (its first stem has C/2 channels), got C={C}")
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self.cells, c_prev, c_aux = self._build_cells(genotype, C, C, C, True)
        self.auxiliary_head = AuxiliaryHeadImageNet(c_aux, n_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # DARTS: AvgPool2d(7), the same at 224x224
        self.classifier = nn.Linear(c_prev, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(logits, logits_aux)``; ``logits_aux`` only exists in training."""
        s0 = Shared(self.stem0(self._layout(x)))
        # stem1's ReLU is s0's shared relu, which the first cell's FactorizedReduce reads too
        # (DARTS' in-place ReLU there turned s0 itself into relu(s0): the same values)
        s1 = Shared(self.stem1[2](self.stem1[1](s0.relu)))
        return self._cells_forward(s0, s1)


def choose_network(setting: str, size: tuple[int, int]) -> str:
    """The network of ``retrain.network`` (auto, cifar, imagenet) for images of ``size`` (H, W):
    auto is imagenet from a shorter side of AUTO_IMAGENET_SIDE on, cifar below."""
    if setting not in ("auto", *NETWORKS):
        raise ValueError(f"network {setting!r} is invalid; valid: auto, {', '.join(NETWORKS)}")
    if setting != "auto":
        return setting
    return "imagenet" if min(size) >= AUTO_IMAGENET_SIDE else "cifar"


def build_network(kind: str, genotype: Genotype, C: int, n_classes: int, layers: int, auxiliary: bool,
                  in_channels: int = 3) -> EvalNetwork:
    """The evaluation network ``kind`` (NETWORKS) of a genotype."""
    if kind not in NETWORKS:
        raise ValueError(f"network {kind!r} is invalid; valid: {', '.join(NETWORKS)}")
    cls = EvalNetworkImageNet if kind == "imagenet" else EvalNetwork
    return cls(genotype, C=C, n_classes=n_classes, layers=layers, auxiliary=auxiliary, in_channels=in_channels)
