# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Anomaly map generation for BTM: patch scores → bilinear upsampling → Gaussian blur.

BTM blurs the float map with a Gaussian of kernel 15 and σ = 4 (BTF quantised the map to 8 bits and
blurred it through PIL; BTM does not).
"""

from __future__ import annotations

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn
from torch.nn import functional as F


class AnomalyMapGenerator(nn.Module):
    """Turn ``(B, h, w)`` patch scores into ``(B, 1, H, W)`` anomaly maps.

    Args:
        blur_kernel_size (int): Side of the Gaussian kernel (odd). Defaults to ``15``.
        blur_sigma (float): Standard deviation of the Gaussian. Defaults to ``4.0``.

    Example:
        >>> generator = AnomalyMapGenerator()
        >>> generator(torch.rand(2, 28, 28), (224, 224)).shape
        torch.Size([2, 1, 224, 224])
    """

    def __init__(self, blur_kernel_size: int = 15, blur_sigma: float = 4.0) -> None:
        super().__init__()
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            msg = f"blur_kernel_size must be a positive odd integer, got {blur_kernel_size}."
            raise ValueError(msg)
        if blur_sigma <= 0:
            msg = f"blur_sigma must be positive, got {blur_sigma}."
            raise ValueError(msg)
        self.blur = GaussianBlur2d(
            kernel_size=(blur_kernel_size, blur_kernel_size),
            sigma=(blur_sigma, blur_sigma),
            channels=1,
        )

    def forward(self, patch_scores: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Upsample and blur patch scores.

        Args:
            patch_scores (torch.Tensor): ``(B, h, w)`` or ``(B, 1, h, w)`` patch scores.
            image_size (tuple[int, int] | torch.Size): Output ``(H, W)``.

        Returns:
            torch.Tensor: ``(B, 1, H, W)`` anomaly maps.
        """
        if patch_scores.dim() == 3:
            patch_scores = patch_scores.unsqueeze(1)
        anomaly_map = F.interpolate(patch_scores, size=tuple(image_size), mode="bilinear", align_corners=False)
        return self.blur(anomaly_map)
