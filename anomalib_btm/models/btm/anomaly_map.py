# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Anomaly map generation for BTM: patch scores → bilinear upsampling → Gaussian blur.

BTM blurs the float map with a Gaussian of kernel 15 and σ = 4. BTF divided the map by its maximum,
quantised it to 8 bits through PIL, blurred it with ``PIL.ImageFilter.GaussianBlur(radius=4)`` and scaled it
back (``blur_mode="pil"``, for comparison; not exportable).
"""

from __future__ import annotations

import numpy as np
import torch
from anomalib.models.components import GaussianBlur2d
from PIL import Image, ImageFilter
from torch import nn
from torch.nn import functional as F

from anomalib_btm.checks import check_choice

BLUR_MODES: tuple[str, ...] = ("gaussian", "pil")


def pil_blur(anomaly_map: torch.Tensor, radius: float = 4.0) -> torch.Tensor:
    """BTF's map blur: divide by the map's maximum, quantise to 8 bits, PIL Gaussian blur, scale back.

    As ``torchvision``'s ``ToPILImage`` does, the quantisation truncates (``(x · 255).byte()``).

    Args:
        anomaly_map (torch.Tensor): ``(B, 1, H, W)`` maps.
        radius (float): PIL blur radius.

    Returns:
        torch.Tensor: ``(B, 1, H, W)`` blurred maps.
    """
    blur = ImageFilter.GaussianBlur(radius=radius)
    out = torch.empty_like(anomaly_map)
    for index, single in enumerate(anomaly_map):
        peak = single.max()
        scaled = single[0] / peak if peak > 0 else torch.zeros_like(single[0])
        quantised = (scaled * 255).to(torch.uint8).cpu().numpy()
        blurred = np.asarray(Image.fromarray(quantised, mode="L").filter(blur), dtype=np.float32) / 255.0
        out[index, 0] = torch.from_numpy(blurred).to(anomaly_map.device) * peak
    return out


class AnomalyMapGenerator(nn.Module):
    """Turn ``(B, h, w)`` patch scores into ``(B, 1, H, W)`` anomaly maps.

    Args:
        blur_kernel_size (int): Side of the Gaussian kernel (odd). Defaults to ``15``.
        blur_sigma (float): Standard deviation of the Gaussian (the radius of the PIL blur). Defaults to ``4.0``.
        blur_mode (str): ``"gaussian"`` (BTM: float tensor) or ``"pil"`` (BTF: 8-bit PIL blur per map).

    Example:
        >>> generator = AnomalyMapGenerator()
        >>> generator(torch.rand(2, 28, 28), (224, 224)).shape
        torch.Size([2, 1, 224, 224])
    """

    def __init__(self, blur_kernel_size: int = 15, blur_sigma: float = 4.0, blur_mode: str = "gaussian") -> None:
        super().__init__()
        check_choice("blur_mode", blur_mode, BLUR_MODES)
        self.blur_mode = blur_mode
        self.blur_sigma = blur_sigma
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
        if self.blur_mode == "pil":
            return pil_blur(anomaly_map, self.blur_sigma)
        return self.blur(anomaly_map)
