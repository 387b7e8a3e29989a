"""SSENet classification network on the DeepLab-LargeFOV VGG16 (docs/method.md#vgg16).

fc6 dilation 1 and the ResNet38 variant's head (:class:`network.resnet38_cls_ser.CamHead`: dropout, a 1x1 ``fc8``
to the 20 classes without bias, the CAM upsampled to the input size), so
:func:`network.resnet38_cls_ser.ssenet_loss` trains it unchanged.
"""

from __future__ import annotations

from network import vgg16d
from network.resnet38_cls_ser import CamHead
from voc12.voc import NUM_FG_CLASSES


class Net(CamHead, vgg16d.Net):
    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_FG_CLASSES):
        super().__init__(width_mult, num_classes, fc6_dilation=1)
