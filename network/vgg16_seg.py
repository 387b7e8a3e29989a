"""DeepLab-LargeFOV on the VGG16 backbone: the segmentation network of docs/method.md#segmentation.

The classic network that DeepLab's ``vgg16_20M.caffemodel`` initialises (docs/method.md#vgg16)::

    conv1_1 ... conv5_3 (pools at stride 8, conv5_* dilation 2)
    fc6: 3x3, dilation 12, 512 -> 1024, bias -> ReLU -> Dropout2d(0.5)      (pretrained, in the caffemodel)
    fc7: 1x1, 1024 -> 1024, bias -> ReLU -> Dropout2d(0.5)                  (pretrained, in the caffemodel)
    fc8: 1x1, 1024 -> 21, bias (Gaussian std 0.01, bias 0)                  (new layer)
    -> bilinear to the input size (align_corners=False)

The 20M model's fc6 is already the subsampled 1024 x 512 x 3 x 3 layer, so
fc6 and fc7 load from it and train at the pretrained learning rates (1x / 2x);
only ``fc8`` is new (10x / 20x), and an ``fc8`` found in an ImageNet file
(the 1000-class classifier) is ignored by the weight loader. ``conv1_*`` and
``conv2_*`` stay frozen, as in every VGG16 network here
(:data:`network.vgg16d.FROZEN_MODULES`); fc6's dilation 12 is the backbone's ``head_options``. The head is
:class:`network.heads.LargeFOVHead`. Images are normalised with Caffe's BGR
means (``Net.normalize``), which the scripts take from the network.
"""

from __future__ import annotations

from network import vgg16d
from network.heads import LargeFOVHead


class Net(LargeFOVHead, vgg16d.Net):
    pass
