"""SSENet classification network on the DeepLab-LargeFOV VGG16 (docs/method.md#vgg16).

fc6 dilation 1 (the backbone's ``head_options``) and the ResNet38 variant's head (:class:`network.heads.CamHead`:
dropout, a 1x1 ``fc8`` to the classes without bias, the CAM upsampled to the input size), so
:func:`network.resnet38_cls_ser.ssenet_loss` trains it unchanged.
"""

from __future__ import annotations

from network import vgg16d
from network.heads import CamHead


class Net(CamHead, vgg16d.Net):
    pass
