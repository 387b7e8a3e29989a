"""AffinityNet on ResNet38 (Ahn & Kwak, CVPR 2018; docs/method.md#affinitynet).

Features from three depths are embedded, concatenated and compared pairwise:
the affinity of two stride-8 grid pixels is ``exp(-mean_c |f_i - f_j|)`` for
every pair within the radius-5 neighbourhood of ``tool.randomwalk``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38d
from tool.randomwalk import DEFAULT_RADIUS, pair_indices


def fusion_layer(f8_layers: tuple[nn.Conv2d, ...]) -> nn.Conv2d:
    """The 1x1 f9 over the concatenated f8 features; initialises the f8 convs (He) and f9 (Xavier, gain 4)."""
    embed = sum(layer.out_channels for layer in f8_layers)
    f9 = nn.Conv2d(embed, embed, 1, bias=False)
    for layer in f8_layers:
        nn.init.kaiming_normal_(layer.weight)
    nn.init.xavier_uniform_(f9.weight, gain=4)
    return f9


class Net(resnet38d.Net):
    new_layer_names = ("f8_3", "f8_4", "f8_5", "f9")

    def __init__(self, width_mult: float = 1.0, radius: int = DEFAULT_RADIUS):
        super().__init__(width_mult)
        self.radius = radius
        c = resnet38d.scaled
        self.f8_3 = nn.Conv2d(c(512, width_mult), c(64, width_mult), 1, bias=False)
        self.f8_4 = nn.Conv2d(c(1024, width_mult), c(128, width_mult), 1, bias=False)
        self.f8_5 = nn.Conv2d(c(4096, width_mult), c(256, width_mult), 1, bias=False)
        self.f9 = fusion_layer((self.f8_3, self.f8_4, self.f8_5))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The affinity feature map, (N, 448, H/8, W/8) at full width."""
        d = self.forward_as_dict(x)
        f8_3 = F.elu(self.f8_3(d["conv4"]))
        f8_4 = F.elu(self.f8_4(d["conv5"]))
        f8_5 = F.elu(self.f8_5(d["conv6"]))
        return F.elu(self.f9(torch.cat([f8_3, f8_4, f8_5], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pair affinities (N, 34, n_from) in the order of ``tool.randomwalk.pair_indices``."""
        return pair_affinities(self.embed(x), self.radius)


def pair_affinities(feat: torch.Tensor, radius: int = DEFAULT_RADIUS) -> torch.Tensor:
    """``exp(-mean_c |f_from - f_to|)`` for every pair of an (N, C, h, w) feature map -> (N, n_pairs, n_from)."""
    n, c, h, w = feat.shape
    idx_from, idx_to = pair_indices(h, w, radius)
    flat = feat.reshape(n, c, h * w)
    f_from = flat[:, :, torch.tensor(idx_from, device=feat.device)].unsqueeze(2)  # (N, C, 1, n_from)
    f_to = flat[:, :, torch.tensor(idx_to, device=feat.device)]  # (N, C, n_pairs, n_from)
    return torch.exp(-torch.mean(torch.abs(f_to - f_from), dim=1))


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_bg / 4 + L_fg / 4 + L_neg / 2`` (docs/method.md#affinitynet).

    ``L_bg``, ``L_fg``: mean ``-log(a + eps)`` over background / foreground positive
    pairs; ``L_neg``: mean ``-log(1 + eps - a)`` over negative pairs. All tensors
    are (N, n_pairs, n_from); the means run over the whole batch.
    """
    loss_bg = torch.sum(-bg_pos * torch.log(aff + eps)) / (torch.sum(bg_pos) + eps)
    loss_fg = torch.sum(-fg_pos * torch.log(aff + eps)) / (torch.sum(fg_pos) + eps)
    loss_neg = torch.sum(-neg * torch.log(1.0 + eps - aff)) / (torch.sum(neg) + eps)
    loss = loss_bg / 4 + loss_fg / 4 + loss_neg / 2
    return loss, {"loss_bg": loss_bg, "loss_fg": loss_fg, "loss_neg": loss_neg}
