"""The image preprocessing of an export as graph operations, so that a deployed file takes decoded pixels.

:class:`ImageInput` turns uint8 images ``(N, H, W, 3)`` of any size — what Pillow, OpenCV (after BGR->RGB)
or a browser decode — into the normalised crops the network was validated on: the resize of
:mod:`torchgraft.data.resize` as two weight matrices built from the input's size (the same weights, clamping and
scaling as :meth:`Preprocessing.eval_transform`), torchvision's centre crop (classification)
or the whole image (segmentation), then scaling to [0, 1] and ``mean``/``std``. The operations are plain
tensor arithmetic that ``torch.export`` traces with symbolic height and width and ONNX Runtime runs.
"""

from __future__ import annotations

import torch
from torch import nn

from torchgraft.data.preprocess import Preprocessing
from torchgraft.data.resize import resize_matrices, shorter_side_size

__all__ = ["ImageInput"]


class ImageInput(nn.Module):
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, size, size)``, as validation preprocessed images.

    ``whole=True`` (segmentation) resizes the whole image to ``size`` x ``size``; otherwise the shorter side
    goes to ``resize`` and the centre ``size`` x ``size`` is kept.

    Example:
        >>> ImageInput(preprocessing_for("resnet18"))(torch.zeros(1, 375, 500, 3, dtype=torch.uint8)).shape
        torch.Size([1, 3, 224, 224])
    """

    def __init__(self, preprocessing: Preprocessing, *, whole: bool = False) -> None:
        super().__init__()
        self.preprocessing, self.whole = preprocessing, whole
        shape = (1, len(preprocessing.mean), 1, 1)
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).reshape(shape))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The normalised crops of ``image`` (see the class docstring)."""
        prep = self.preprocessing
        pixels = image.permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, H, W), values 0..255
        height, width = pixels.shape[-2], pixels.shape[-1]
        target = (prep.size, prep.size) if self.whole else shorter_side_size(height, width, prep.resize)
        crop = None if self.whole else prep.size  # the crop's rows and columns only: a fixed output size
        rows, columns = resize_matrices(height, width, target, prep.interpolation, crop=crop)
        resized = torch.matmul(torch.matmul(rows, pixels), columns.transpose(0, 1)).clamp(0.0, 255.0) / 255.0
        return (resized - self.mean) / self.std
