"""AffinityNet on the DeepLab-LargeFOV VGG16 (docs/method.md#vgg16, docs/method.md#affinitynet).

fc6 dilation 4 (the backbone's ``head_options``). conv4, conv5 and conv5fc are embedded by 1x1 convolutions
(``f8_3``, ``f8_4``, ``f8_5``), each followed by GroupNorm (8 / 16 / 32 groups, the backbone's
``affinity_group_norm``) and ELU, concatenated and mixed by ``f9`` (:class:`network.heads.AffinityHead`).
"""

from __future__ import annotations

from network import vgg16d
from network.heads import AffinityHead


class Net(AffinityHead, vgg16d.Net):
    pass
