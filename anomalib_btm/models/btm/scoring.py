# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Dual-k nearest-neighbour scoring: BTM's image score and pixel score from one kNN query.

BTM's point is that anomaly detection (one score per image) and anomaly segmentation (one score
per pixel) want different distance metrics:

* image score: the maximum over patches of the mean distance to the ``k_image`` nearest memory-bank
  features (``k_image=1``: the plain 1-NN distance), no reweighting;
* patch score: per patch, the mean of the *squared* distances to its ``k_pixel`` nearest memory-bank
  features (``pixel_metric="squared_mean"``), or of the plain distances (``"mean"``).

Both come from a single top-k query with ``k = max(k_image, k_pixel)``. The distance is computed with
a matmul (``‖x‖² − 2x·m + ‖m‖²``), not ``torch.cdist``, so that the graph exports to ONNX/OpenVINO. That matmul
is nearly all of the scoring time; on CPU, outside export, it runs in NumPy's BLAS (OpenBLAS in NumPy's wheels),
which ``benchmarks/scoring.py`` measures against torch's own on the same bank.

For comparison, ``image_score="reweighted"`` gives BTF's / PatchCore's reweighted image score.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Literal, NamedTuple

import torch
from threadpoolctl import ThreadpoolController
from torch import nn

from anomalib_btm.checks import check_choice
from anomalib_btm.tracing import capturing_graph

PixelMetric = Literal["squared_mean", "mean"]
ImageScore = Literal["nearest", "reweighted"]
PIXEL_METRICS: tuple[str, ...] = ("squared_mean", "mean")
IMAGE_SCORES: tuple[str, ...] = ("nearest", "reweighted")


@cache
def _blas_controller() -> ThreadpoolController:
    """The thread pools of the BLAS libraries loaded in this process (scanned once)."""
    return ThreadpoolController()


def _numpy_matmul_eligible(queries: torch.Tensor, bank: torch.Tensor) -> bool:
    """Whether ``queries @ bank.T`` may run in NumPy: float32 CPU tensors, no autograd, no export or compile."""
    return (
        queries.device.type == "cpu"
        and bank.device.type == "cpu"
        and queries.dtype == torch.float32
        and bank.dtype == torch.float32
        and not (torch.is_grad_enabled() and (queries.requires_grad or bank.requires_grad))
        and not capturing_graph()
    )


def inner_products(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``queries @ bank.T``; on CPU (outside autograd and export) computed by NumPy's BLAS.

    NumPy's wheels ship OpenBLAS, whose single-precision matmul is faster than torch's bundled BLAS on some CPUs
    (``benchmarks/scoring.py`` prints both on the same bank); the result is the same product up to float rounding.
    The BLAS uses as many threads as torch (``torch.get_num_threads()``), so DDP's one thread per process holds.

    Args:
        queries (torch.Tensor): ``(N, D)`` query features.
        bank (torch.Tensor): ``(M, D)`` memory-bank features.

    Returns:
        torch.Tensor: ``(N, M)`` inner products.
    """
    if not _numpy_matmul_eligible(queries, bank):
        return queries @ bank.T
    return _numpy_products(queries, bank)


def _numpy_products(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``queries @ bank.T`` in NumPy's BLAS on torch's thread count (callers check eligibility)."""
    with _blas_controller().limit(limits=torch.get_num_threads(), user_api="blas"):
        return torch.from_numpy(queries.detach().numpy() @ bank.detach().numpy().T)


def squared_distances(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances between rows of ``queries`` and rows of ``bank``, via a matmul.

    Args:
        queries (torch.Tensor): ``(N, D)`` query features.
        bank (torch.Tensor): ``(M, D)`` memory-bank features.
        bank_sq_norms (torch.Tensor | None): Precomputed ``(M,)`` squared norms of ``bank``.

    Returns:
        torch.Tensor: ``(N, M)`` squared distances, clamped at 0 against rounding.
    """
    if bank_sq_norms is None:
        bank_sq_norms = bank.pow(2).sum(dim=1)
    q_sq = queries.pow(2).sum(dim=1, keepdim=True)
    if _numpy_matmul_eligible(queries, bank):
        dist = _numpy_products(queries, bank).mul_(-2.0).add_(q_sq).add_(bank_sq_norms.unsqueeze(0))
        return dist.clamp_min_(0.0)
    dist = torch.addmm(q_sq + bank_sq_norms.unsqueeze(0), queries, bank.T, beta=1.0, alpha=-2.0)
    return dist.clamp_min(0.0)


def knn(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    chunk_size: int | None = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest memory-bank features of each query (Euclidean), in ascending distance.

    Args:
        queries (torch.Tensor): ``(N, D)`` query features.
        bank (torch.Tensor): ``(M, D)`` memory bank, ``M >= k``.
        k (int): Number of neighbours.
        chunk_size (int | None): Queries per distance block, which bounds memory at ``chunk_size × M``
            floats. ``None`` computes one block, as does any export (``torch.compiler.is_exporting()``), where
            shapes must stay symbolic.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(N, k)`` distances (not squared) and ``(N, k)`` bank indices.

    Raises:
        ValueError: If the memory bank holds fewer than ``k`` features.
    """
    if bank.shape[0] < k:
        msg = (
            f"The memory bank holds {bank.shape[0]} features but k={k} neighbours were requested. "
            "Lower k_image/k_pixel or raise coreset_sampling_ratio."
        )
        raise ValueError(msg)
    bank_sq_norms = bank.pow(2).sum(dim=1)
    # Exported graphs take one block: a loop over chunks would fix the batch size in the graph.
    if chunk_size is None or torch.compiler.is_exporting() or queries.shape[0] <= chunk_size:
        sq, idx = squared_distances(queries, bank, bank_sq_norms).topk(k, dim=1, largest=False)
        return sq.sqrt(), idx
    dists, idxs = [], []
    for chunk in queries.split(chunk_size):
        sq, idx = squared_distances(chunk, bank, bank_sq_norms).topk(k, dim=1, largest=False)
        dists.append(sq.sqrt())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


class DualKScores(NamedTuple):
    """Scores of one dual-k query.

    Attributes:
        pred_score (torch.Tensor): ``(B,)`` image scores.
        patch_scores (torch.Tensor): ``(B, h, w)`` per-patch scores for the anomaly map.
    """

    pred_score: torch.Tensor
    patch_scores: torch.Tensor


class DualKScorer(nn.Module):
    """BTM's dual-k scoring of patch embeddings against a memory bank.

    Args:
        k_image (int): Neighbours averaged for the image score. Defaults to ``1`` (BTM).
        k_pixel (int): Neighbours averaged for the patch score. Defaults to ``3`` (BTM).
        pixel_metric (str): ``"squared_mean"`` (mean of squared distances, BTM's default) or ``"mean"``
            (mean of distances, the formula as printed in the paper).
        image_score (str): ``"nearest"`` (BTM) or ``"reweighted"`` (BTF/PatchCore reweighting of the
            maximal 1-NN distance, for comparison).
        n_reweight (int): Bank neighbours of ``m*`` used by the reweighted score (BTF: 3, ``m*`` included).
        chunk_size (int | None): Query rows per distance block; ``None`` for one block.

    Example:
        >>> scorer = DualKScorer(k_image=1, k_pixel=3)
        >>> scores = scorer(torch.randn(2, 64, 28, 28), torch.randn(500, 64))
        >>> scores.pred_score.shape, scores.patch_scores.shape
        (torch.Size([2]), torch.Size([2, 28, 28]))
    """

    def __init__(
        self,
        k_image: int = 1,
        k_pixel: int = 3,
        pixel_metric: str = "squared_mean",
        image_score: str = "nearest",
        n_reweight: int = 3,
        chunk_size: int | None = 4096,
    ) -> None:
        super().__init__()
        for name, value in (("k_image", k_image), ("k_pixel", k_pixel)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        check_choice("pixel_metric", pixel_metric, PIXEL_METRICS)
        check_choice("image_score", image_score, IMAGE_SCORES)
        if image_score == "reweighted" and n_reweight < 2:
            msg = f"n_reweight must be at least 2 (m* and one more neighbour), got {n_reweight}."
            raise ValueError(msg)
        self.k_image = k_image
        self.k_pixel = k_pixel
        self.pixel_metric = pixel_metric
        self.image_score = image_score
        self.n_reweight = n_reweight
        self.chunk_size = chunk_size

    @property
    def k(self) -> int:
        """Neighbours fetched by the single kNN query: ``max(k_image, k_pixel)``."""
        return max(self.k_image, self.k_pixel)

    def forward(self, embedding: torch.Tensor, memory_bank: torch.Tensor) -> DualKScores:
        """Score a batch of patch embeddings.

        Args:
            embedding (torch.Tensor): ``(B, D, h, w)`` patch features.
            memory_bank (torch.Tensor): ``(M, D)`` memory bank.

        Returns:
            DualKScores: ``(B,)`` image scores and ``(B, h, w)`` patch scores.
        """
        batch_size, dim, height, width = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
        dist, idx = knn(patches, memory_bank, self.k, self.chunk_size)
        dist = dist.reshape(batch_size, height * width, self.k)

        pixel_dist = dist[..., : self.k_pixel]
        if self.pixel_metric == "squared_mean":
            pixel_dist = pixel_dist.pow(2)
        patch_scores = pixel_dist.mean(dim=-1).reshape(batch_size, height, width)

        if self.image_score == "nearest":
            pred_score = dist[..., : self.k_image].mean(dim=-1).amax(dim=1)
        else:
            idx = idx.reshape(batch_size, height * width, self.k)
            pred_score = self.reweighted_score(
                patches.reshape(batch_size, height * width, dim), dist[..., 0], idx[..., 0], memory_bank
            )
        return DualKScores(pred_score=pred_score, patch_scores=patch_scores)

    def reweighted_score(
        self,
        patches: torch.Tensor,
        nn_dist: torch.Tensor,
        nn_idx: torch.Tensor,
        memory_bank: torch.Tensor,
    ) -> torch.Tensor:
        """BTF's reweighted image score (PatchCore eq. 7 as BTF implements it).

        ``s* = max_i min_m ‖f_i − m‖`` at patch ``f*`` with nearest bank feature ``m*``; ``N`` the
        ``n_reweight`` nearest bank features of ``m*`` (``m*`` itself first, excluded from the sum as in
        BTF's code); ``w = 1 − exp(s*/√D) / Σ_{m∈N∖m*} exp(‖f* − m‖/√D)``; score ``w · s*``.

        Args:
            patches (torch.Tensor): ``(B, P, D)`` patch features.
            nn_dist (torch.Tensor): ``(B, P)`` 1-NN distances.
            nn_idx (torch.Tensor): ``(B, P)`` 1-NN bank indices.
            memory_bank (torch.Tensor): ``(M, D)`` memory bank.

        Returns:
            torch.Tensor: ``(B,)`` reweighted image scores.
        """
        if memory_bank.shape[0] < self.n_reweight:
            msg = (
                f"The memory bank holds {memory_bank.shape[0]} features, fewer than n_reweight={self.n_reweight}. "
                "Raise coreset_sampling_ratio or use image_score='nearest'."
            )
            raise ValueError(msg)
        s_star, s_idx = nn_dist.max(dim=1)  # (B,)
        f_star = patches.gather(1, s_idx.view(-1, 1, 1).expand(-1, 1, patches.shape[-1])).squeeze(1)  # (B, D)
        m_star = memory_bank[nn_idx.gather(1, s_idx.view(-1, 1)).squeeze(1)]  # (B, D)
        _, support = squared_distances(m_star, memory_bank).topk(self.n_reweight, dim=1, largest=False)
        neighbours = memory_bank[support[:, 1:]]  # (B, n_reweight - 1, D)
        knn_dist = (f_star.unsqueeze(1) - neighbours).pow(2).sum(-1).sqrt()
        scale = math.sqrt(patches.shape[-1])
        weight = 1.0 - torch.exp(s_star / scale) / torch.exp(knn_dist / scale).sum(dim=1)
        return weight * s_star
