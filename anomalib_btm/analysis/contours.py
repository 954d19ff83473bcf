# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Contour plots of memory-bank score functions on a 2-D grid (BTM paper §2.3, Figures 3–7).

A small random 2-D "coreset" stands in for the memory bank; every point of a regular grid (eq. 13, step 0.005) is
scored as a one-patch test image against it. All scores come from one grid × coreset distance matrix (the kNN of
:func:`anomalib_btm.models.btm.scoring.knn`, the matmul distances of
:func:`~anomalib_btm.models.btm.scoring.squared_distances`), with no loop over grid points.

Score functions drawn:

* **kNN distance mean** (eq. 6, Fig. 3): ``s(f) = 1/k Σ_{m∈N_k(f)} ‖f − m‖``; ``squared=True`` averages the squared
  distances instead (BTM's pixel metric, ``pixel_metric="squared_mean"``).
* **PatchCore / BTF reweighting** (eqs. 10–12, Figs. 4–6): ``s* = ‖f − m*‖`` with ``m*`` the nearest coreset point of
  ``f``; ``N_k(m*)`` the ``k`` nearest coreset points of ``m*`` (``m*`` itself first);
  ``α₁ = exp(s*/T) / Σ_{m∈N} exp(‖f − m‖/T)``, ``w = 1 − α₁``, ``s = w · s*``.
  By default (``include_m_star=False``, ``temperature=None``) the sum runs over ``N_k(m*) ∖ {m*}`` and
  ``T = √D`` (``D = 2`` here): BTF's code and :class:`~anomalib_btm.models.btm.scoring.DualKScorer`
  ``(image_score="reweighted", n_reweight=k)``, so ``k ≥ 2``. ``include_m_star=True, temperature=1.0`` is the
  paper's eq. 10 as printed (``m*`` in the sum, no scaling; ``k = 1`` then gives ``w ≡ 0``).
* **Stretched clusters** (Fig. 7): six points in clusters of 1, 2 and 3 points, the abscissa enlarged 7 times.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects (rendered by the Agg canvas), so plotting
neither needs a display nor changes pyplot's backend. ``examples/metric_contours.py`` writes them all.

Example:
    >>> grid = make_grid((0.0, 1.0, 0.0, 1.0), step=0.005)
    >>> coreset = random_coreset(n=12, n_outliers=3, seed=0)
    >>> knn_mean_score(grid.points, coreset.points, k=3).shape
    (40000,)
    >>> alpha1, weight, score = reweighting_terms(grid.points, coreset.points, k=3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from anomalib_btm.checks import check_choice
from anomalib_btm.models.btm.scoring import knn, squared_distances

__all__ = [
    "DEFAULT_BOX",
    "DEFAULT_STEP",
    "REWEIGHTING_TERMS",
    "Coreset",
    "Grid",
    "ReweightingTerms",
    "bounding_box",
    "draw_paper_figures",
    "knn_mean_score",
    "make_grid",
    "plot_contour_panels",
    "plot_knn_mean",
    "plot_reweighting",
    "plot_stretched_clusters",
    "random_coreset",
    "reweighting_terms",
    "stretched_clusters",
]

DEFAULT_BOX: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
"""Default visualisation box ``(xmin, xmax, ymin, ymax)``."""

DEFAULT_STEP = 0.005
"""Grid step of the paper (eq. 13)."""

MAX_GRID_POINTS = 4_000_000
"""Largest grid accepted by :func:`make_grid` (a 2000 × 2000 grid); beyond, raise the step or shrink the box."""

REWEIGHTING_TERMS: tuple[str, ...] = ("alpha1", "weight", "score")
"""Terms of the reweighted score that :func:`plot_reweighting` can draw."""

_TERM_LABELS: dict[str, str] = {
    "alpha1": "α₁ (eq. 12)",
    "weight": "weight w = 1 − α₁ (eq. 10)",
    "score": "reweighted score s = w·s* (eq. 11)",
}
_INLIER_COLOUR = "black"
_OUTLIER_COLOUR = "tab:orange"


class Grid(NamedTuple):
    """A regular 2-D grid (eq. 13).

    Attributes:
        xs (np.ndarray): ``(nx,)`` abscissae ``x0 + step·n``, ``0 ≤ n < (x1 − x0)/step``.
        ys (np.ndarray): ``(ny,)`` ordinates.
        step (float): Grid step.
    """

    xs: np.ndarray
    ys: np.ndarray
    step: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``: the shape that :meth:`reshape` gives to per-point values."""
        return (len(self.ys), len(self.xs))

    @property
    def points(self) -> np.ndarray:
        """``(ny·nx, 2)`` grid points ``(x, y)``, ``x`` varying fastest (row-major over ``(ny, nx)``)."""
        xx, yy = np.meshgrid(self.xs, self.ys)
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def reshape(self, values: np.ndarray) -> np.ndarray:
        """Bring per-point values into the ``(ny, nx)`` layout of ``contourf(xs, ys, Z)``.

        Args:
            values (np.ndarray): ``(ny·nx,)`` values, in the order of :attr:`points`.

        Returns:
            np.ndarray: ``(ny, nx)`` values.
        """
        return np.asarray(values).reshape(self.shape)


class Coreset(NamedTuple):
    """A 2-D stand-in for a memory bank.

    Attributes:
        points (np.ndarray): ``(M, 2)`` coordinates.
        outlier (np.ndarray): ``(M,)`` bool, ``True`` for outliers (drawn in orange).
        cluster (np.ndarray): ``(M,)`` int cluster id (``0`` for the inliers of :func:`random_coreset`, ``-1`` for
            its outliers; ``0, 1, 2`` for the clusters of 1, 2 and 3 points of :func:`stretched_clusters`).
    """

    points: np.ndarray
    outlier: np.ndarray
    cluster: np.ndarray


class ReweightingTerms(NamedTuple):
    """Terms of PatchCore's / BTF's reweighted score at each query point.

    Attributes:
        alpha1 (np.ndarray): ``(N,)`` ``α₁ = exp(s*/T) / Σ_{m∈N} exp(‖f − m‖/T)``.
        weight (np.ndarray): ``(N,)`` ``w = 1 − α₁``.
        score (np.ndarray): ``(N,)`` ``s = w · s*``.
    """

    alpha1: np.ndarray
    weight: np.ndarray
    score: np.ndarray


def _check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        msg = f"box must be four finite numbers (xmin, xmax, ymin, ymax), got {tuple(box)!r}."
        raise ValueError(msg)
    xmin, xmax, ymin, ymax = values
    if not (xmin < xmax and ymin < ymax):
        msg = (
            f"box {values!r} is empty: it must be (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax. "
            "Swap the bounds or widen the box."
        )
        raise ValueError(msg)
    return xmin, xmax, ymin, ymax


def _axis(start: float, stop: float, step: float) -> np.ndarray:
    # n < (stop − start)/step, with a tolerance so that (0, 1, 0.005) gives exactly 200 values.
    count = max(1, math.ceil((stop - start) / step - 1e-9))
    return start + step * np.arange(count, dtype=np.float64)


def make_grid(box: Sequence[float] = DEFAULT_BOX, step: float = DEFAULT_STEP) -> Grid:
    """The visualisation grid of eq. 13: ``x = x0 + step·n`` for ``0 ≤ n < (x1 − x0)/step``, same along ``y``.

    Args:
        box (Sequence[float]): ``(xmin, xmax, ymin, ymax)``, ``xmin < xmax`` and ``ymin < ymax``.
        step (float): Grid step, positive. Defaults to ``0.005`` (the paper's).

    Returns:
        Grid: The grid.

    Raises:
        ValueError: On an empty or malformed box, a non-positive step, or a grid above 4 million points.

    Example:
        >>> grid = make_grid((0.0, 1.0, 0.0, 0.5), step=0.005)
        >>> grid.shape, grid.points.shape
        ((100, 200), (20000, 2))
    """
    xmin, xmax, ymin, ymax = _check_box(box)
    if not (math.isfinite(step) and step > 0):
        msg = f"step must be a positive number (the paper uses 0.005), got {step!r}."
        raise ValueError(msg)
    xs, ys = _axis(xmin, xmax, step), _axis(ymin, ymax, step)
    if len(xs) * len(ys) > MAX_GRID_POINTS:
        msg = (
            f"box {(xmin, xmax, ymin, ymax)} with step {step} gives {len(xs)} × {len(ys)} grid points, more than "
            f"{MAX_GRID_POINTS}. Raise the step or shrink the box."
        )
        raise ValueError(msg)
    return Grid(xs=xs, ys=ys, step=float(step))


def random_coreset(
    n: int = 12,
    n_outliers: int = 3,
    seed: int = 0,
    box: Sequence[float] = DEFAULT_BOX,
) -> Coreset:
    """A small random 2-D coreset: a cluster of inliers in the middle of ``box`` and a few outliers around it.

    Inliers are drawn from an isotropic Gaussian at the centre of the box (standard deviation 10 % of the smaller
    side, clipped to the central 60 %); outliers at uniform angles, 28–42 % of the smaller side from the centre.

    Args:
        n (int): Number of inliers, at least 1.
        n_outliers (int): Number of outliers, at least 0.
        seed (int): Seed of the numpy generator; the same seed gives the same points.
        box (Sequence[float]): ``(xmin, xmax, ymin, ymax)`` the points are placed in.

    Returns:
        Coreset: ``n + n_outliers`` points, inliers first.

    Raises:
        ValueError: On ``n < 1``, ``n_outliers < 0`` or an empty box.
    """
    if n < 1:
        msg = f"n (number of inlier coreset points) must be at least 1, got {n}."
        raise ValueError(msg)
    if n_outliers < 0:
        msg = f"n_outliers must be at least 0, got {n_outliers}."
        raise ValueError(msg)
    xmin, xmax, ymin, ymax = _check_box(box)
    rng = np.random.default_rng(seed)
    centre = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    half = np.array([(xmax - xmin) / 2, (ymax - ymin) / 2])
    side = 2 * float(half.min())
    inliers = centre + rng.normal(scale=0.1 * side, size=(n, 2))
    inliers = np.clip(inliers, centre - 0.6 * half, centre + 0.6 * half)
    angles = rng.uniform(0.0, 2 * math.pi, size=n_outliers)
    radii = rng.uniform(0.28 * side, 0.42 * side, size=n_outliers)
    outliers = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    points = np.concatenate([inliers, outliers]).astype(np.float64)
    outlier = np.concatenate([np.zeros(n, dtype=bool), np.ones(n_outliers, dtype=bool)])
    cluster = np.where(outlier, -1, 0)
    return Coreset(points=points, outlier=outlier, cluster=cluster)


def stretched_clusters(stretch: float = 7.0) -> Coreset:
    """Fig. 7's coreset: six points in clusters of 1, 2 and 3 points (left to right), abscissae ``× stretch``.

    Before stretching, the clusters sit at ``x ≈ 0.04``, ``0.10–0.11`` and ``0.16–0.18`` with ``y`` in
    ``0.44–0.57``; stretching along ``x`` separates them while keeping each small, as the edges of three
    distribution clusters would be.

    Args:
        stretch (float): Factor applied to the abscissae, positive. Defaults to ``7`` (the paper's).

    Returns:
        Coreset: Six points, ``cluster`` ``0`` (1 point), ``1`` (2 points), ``2`` (3 points); no outliers.

    Raises:
        ValueError: On a non-positive stretch.
    """
    if not (math.isfinite(stretch) and stretch > 0):
        msg = f"stretch must be a positive number, got {stretch!r}."
        raise ValueError(msg)
    base = np.array(
        [
            [0.04, 0.50],
            [0.10, 0.46],
            [0.11, 0.55],
            [0.16, 0.52],
            [0.17, 0.44],
            [0.18, 0.57],
        ]
    )
    points = base * np.array([stretch, 1.0])
    return Coreset(points=points, outlier=np.zeros(6, dtype=bool), cluster=np.array([0, 1, 1, 2, 2, 2]))


def bounding_box(points: np.ndarray, margin: float = 0.25) -> tuple[float, float, float, float]:
    """A box around ``points`` with ``margin`` added on every side.

    Args:
        points (np.ndarray): ``(M, 2)`` points.
        margin (float): Added to each side, non-negative.

    Returns:
        tuple[float, float, float, float]: ``(xmin, xmax, ymin, ymax)``.

    Raises:
        ValueError: On a negative margin, or when points and margin give an empty box.
    """
    if margin < 0:
        msg = f"margin must be non-negative, got {margin}."
        raise ValueError(msg)
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    return _check_box((low[0], high[0], low[1], high[1]))


def _as_tensor(name: str, values: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        msg = f"{name} must be a non-empty (N, D) array of points, got shape {tuple(tensor.shape)}."
        raise ValueError(msg)
    return tensor


def _check_inputs(
    grid_points: np.ndarray | torch.Tensor, coreset: np.ndarray | torch.Tensor, k: int, min_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    queries = _as_tensor("grid_points", grid_points)
    bank = _as_tensor("coreset", coreset)
    if queries.shape[1] != bank.shape[1]:
        msg = f"grid_points and coreset must have the same dimension, got {queries.shape[1]} and {bank.shape[1]}."
        raise ValueError(msg)
    if isinstance(k, bool) or not isinstance(k, int) or not min_k <= k <= bank.shape[0]:
        msg = f"k must be an integer in [{min_k}, {bank.shape[0]}] (the coreset size), got {k!r}."
        raise ValueError(msg)
    return queries, bank


def knn_mean_score(
    grid_points: np.ndarray | torch.Tensor,
    coreset: np.ndarray | torch.Tensor,
    k: int,
    squared: bool = False,
) -> np.ndarray:
    """KNN distance mean (eq. 6): the mean distance of each point to its ``k`` nearest coreset points.

    Args:
        grid_points (np.ndarray | torch.Tensor): ``(N, D)`` query points.
        coreset (np.ndarray | torch.Tensor): ``(M, D)`` coreset, ``M ≥ k``.
        k (int): Neighbours averaged, ``1 ≤ k ≤ M``.
        squared (bool): Average the squared distances (BTM's ``"squared_mean"`` pixel metric) instead.

    Returns:
        np.ndarray: ``(N,)`` float64 scores; ``k = 1`` is the distance to the nearest coreset point.

    Raises:
        ValueError: On mismatched shapes or ``k`` outside ``[1, M]``.
    """
    queries, bank = _check_inputs(grid_points, coreset, k, min_k=1)
    dist, _ = knn(queries, bank, k, chunk_size=None)
    if squared:
        dist = dist.pow(2)
    return dist.mean(dim=1).numpy()


def reweighting_terms(
    grid_points: np.ndarray | torch.Tensor,
    coreset: np.ndarray | torch.Tensor,
    k: int,
    include_m_star: bool = False,
    temperature: float | None = None,
) -> ReweightingTerms:
    """α₁, weight ``w`` and reweighted score ``s`` (eqs. 10–12) of each point, scored as a one-patch image.

    ``m*`` is the nearest coreset point of the query ``f`` and ``s* = ‖f − m*‖``; ``N_k(m*)`` are the ``k`` nearest
    coreset points of ``m*``, ``m*`` itself first. ``α₁ = exp(s*/T) / Σ_{m∈N} exp(‖f − m‖/T)``, ``w = 1 − α₁``,
    ``s = w · s*``.

    Args:
        grid_points (np.ndarray | torch.Tensor): ``(N, D)`` query points.
        coreset (np.ndarray | torch.Tensor): ``(M, D)`` coreset, ``M ≥ k``.
        k (int): Size of the neighbourhood ``N_k(m*)``, ``m*`` included (DualKScorer's ``n_reweight``).
        include_m_star (bool): Sum over all of ``N_k(m*)`` (the paper's eq. 10 as printed, ``k ≥ 1``) instead of
            ``N_k(m*) ∖ {m*}`` (BTF's code and ``DualKScorer``, ``k ≥ 2``; the default).
        temperature (float | None): ``T``; ``None`` for ``√D`` (BTF, ``DualKScorer``), ``1.0`` for the paper's eq.

    Returns:
        ReweightingTerms: ``(N,)`` float64 ``alpha1``, ``weight`` and ``score``.

    Raises:
        ValueError: On mismatched shapes, ``k`` out of range, or a non-positive temperature.
    """
    queries, bank = _check_inputs(grid_points, coreset, k, min_k=1 if include_m_star else 2)
    if temperature is None:
        temperature = math.sqrt(bank.shape[1])
    if not (math.isfinite(temperature) and temperature > 0):
        msg = f"temperature must be a positive number (None for √D), got {temperature!r}."
        raise ValueError(msg)
    dist = squared_distances(queries, bank).sqrt()  # (N, M), the one grid × coreset distance matrix
    s_star, m_star = dist.min(dim=1)
    # N_k(m) of every coreset point m, m itself first (diagonal forced below every other distance).
    bank_dist = squared_distances(bank, bank)
    bank_dist.fill_diagonal_(-1.0)
    support = bank_dist.topk(k, dim=1, largest=False).indices  # (M, k)
    members = support[m_star]  # (N, k)
    if not include_m_star:
        members = members[:, 1:]
    member_dist = dist.gather(1, members)
    # exp(s*/T) / Σ exp(d/T) = 1 / Σ exp((d − s*)/T), stable since every d ≥ s*.
    alpha1 = 1.0 / torch.exp((member_dist - s_star.unsqueeze(1)) / temperature).sum(dim=1)
    weight = 1.0 - alpha1
    return ReweightingTerms(alpha1=alpha1.numpy(), weight=weight.numpy(), score=(weight * s_star).numpy())


def _draw_coreset(axis: Axes, coreset: Coreset) -> None:
    inliers, outliers = coreset.points[~coreset.outlier], coreset.points[coreset.outlier]
    axis.scatter(inliers[:, 0], inliers[:, 1], s=14, c=_INLIER_COLOUR, edgecolors="white", linewidths=0.5, zorder=3)
    if len(outliers):
        axis.scatter(
            outliers[:, 0], outliers[:, 1], s=22, c=_OUTLIER_COLOUR, edgecolors="black", linewidths=0.5, zorder=3
        )


def plot_contour_panels(
    grid: Grid,
    panels: Sequence[tuple[str, np.ndarray]],
    coreset: Coreset,
    path: str | Path,
    title: str,
    ncols: int | None = None,
    levels: int = 20,
    cmap: str = "viridis",
) -> Path:
    """Draw filled contour panels of per-point values, each with its colour bar and the coreset on top.

    Args:
        grid (Grid): The grid the values were computed on.
        panels (Sequence[tuple[str, np.ndarray]]): ``(panel title, (ny·nx,) or (ny, nx) values)`` per panel.
        coreset (Coreset): Drawn on every panel: inliers black, outliers orange.
        path (str | Path): PNG written (parent directories created).
        title (str): Figure title.
        ncols (int | None): Panels per row; ``None`` for up to 3 (4 panels: 2 × 2).
        levels (int): Number of contour levels.
        cmap (str): Matplotlib colour map.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: If ``panels`` is empty or a panel does not match the grid.
    """
    if not panels:
        msg = "panels must hold at least one (title, values) pair."
        raise ValueError(msg)
    count = len(panels)
    ncols = ncols or (2 if count == 4 else min(count, 3))
    nrows = math.ceil(count / ncols)
    width, height = grid.xs[-1] - grid.xs[0], grid.ys[-1] - grid.ys[0]
    panel_w = 4.4  # inches per panel, colour bar included (about 1 inch)
    panel_h = max(1.5, min(6.0, (panel_w - 1.0) * height / max(width, 1e-12))) + 0.6
    # A bare Figure renders with the Agg canvas and leaves pyplot's global backend and state alone.
    figure = Figure(figsize=(panel_w * ncols, panel_h * nrows + 0.5), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for axis, (panel_title, values) in zip(axes.flat, panels, strict=False):
        values = np.asarray(values)
        if values.size != len(grid.xs) * len(grid.ys):
            msg = f"panel {panel_title!r} has {values.size} values, the grid {grid.shape[0]} × {grid.shape[1]} points."
            raise ValueError(msg)
        z = grid.reshape(values)
        filled = axis.contourf(grid.xs, grid.ys, z, levels=levels, cmap=cmap)
        axis.contour(grid.xs, grid.ys, z, levels=filled.levels, colors="white", linewidths=0.3, alpha=0.6)
        figure.colorbar(filled, ax=axis, shrink=0.9)
        _draw_coreset(axis, coreset)
        axis.set_title(panel_title, fontsize=10)
        axis.set_aspect("equal")
        axis.set_xlim(grid.xs[0], grid.xs[-1])
        axis.set_ylim(grid.ys[0], grid.ys[-1])
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, format="png")
    return path


def plot_knn_mean(
    grid: Grid,
    coreset: Coreset,
    path: str | Path,
    ks: Sequence[int] = (1, 2, 3, 5),
    squared: bool = False,
) -> Path:
    """Fig. 3: contours of the kNN distance mean for several ``k``.

    Args:
        grid (Grid): Grid.
        coreset (Coreset): Coreset.
        path (str | Path): PNG written.
        ks (Sequence[int]): One panel per ``k``.
        squared (bool): Draw the mean of squared distances (BTM's pixel metric) instead.

    Returns:
        Path: ``path``.
    """
    points = grid.points
    name = "squared distance" if squared else "distance"
    panels = [(f"k = {k}", knn_mean_score(points, coreset.points, k, squared=squared)) for k in ks]
    return plot_contour_panels(grid, panels, coreset, path, f"kNN {name} mean (eq. 6) — orange: outliers")


def plot_reweighting(
    grid: Grid,
    coreset: Coreset,
    path: str | Path,
    term: str = "score",
    ks: Sequence[int] = (2, 3, 5, 8),
    include_m_star: bool = False,
    temperature: float | None = None,
) -> Path:
    """Figs. 4–6: contours of α₁, the weight ``w`` or the reweighted score ``s`` for several ``k``.

    Args:
        grid (Grid): Grid.
        coreset (Coreset): Coreset.
        path (str | Path): PNG written.
        term (str): ``"alpha1"`` (Fig. 4), ``"score"`` (Fig. 5) or ``"weight"`` (Fig. 6).
        ks (Sequence[int]): One panel per neighbourhood size ``k = |N_k(m*)|``.
        include_m_star (bool): See :func:`reweighting_terms`.
        temperature (float | None): See :func:`reweighting_terms`.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: On an unknown term.
    """
    check_choice("term", term, REWEIGHTING_TERMS)
    points = grid.points
    panels = [
        (f"k = {k}", getattr(reweighting_terms(points, coreset.points, k, include_m_star, temperature), term))
        for k in ks
    ]
    variant = _variant(include_m_star, temperature, coreset.points.shape[1])
    return plot_contour_panels(grid, panels, coreset, path, f"{_TERM_LABELS[term]} — {variant}")


def _variant(include_m_star: bool, temperature: float | None, dim: int) -> str:
    members = "Σ over N_k(m*)" if include_m_star else "Σ over N_k(m*)∖m* (BTF)"
    scale = f"T = √{dim}" if temperature is None else f"T = {temperature:g}"
    return f"{members}, {scale}"


def plot_stretched_clusters(
    path: str | Path,
    step: float = DEFAULT_STEP,
    stretch: float = 7.0,
    knn_ks: Sequence[int] = (1, 2, 3),
    reweight_ks: Sequence[int] = (2, 3, 4),
    margin: float = 0.25,
) -> Path:
    """Fig. 7: kNN distance mean and reweighted score around clusters of 1, 2 and 3 points stretched along ``x``.

    Args:
        path (str | Path): PNG written.
        step (float): Grid step.
        stretch (float): Abscissa factor of :func:`stretched_clusters`.
        knn_ks (Sequence[int]): ``k`` of the kNN distance-mean panels (first row).
        reweight_ks (Sequence[int]): ``k`` of the reweighted-score panels (second row, BTF's convention).
        margin (float): Margin of the box around the points.

    Returns:
        Path: ``path``.
    """
    coreset = stretched_clusters(stretch)
    grid = make_grid(bounding_box(coreset.points, margin), step)
    points = grid.points
    panels = [(f"kNN distance mean, k = {k}", knn_mean_score(points, coreset.points, k)) for k in knn_ks]
    panels += [(f"reweighted s, k = {k}", reweighting_terms(points, coreset.points, k).score) for k in reweight_ks]
    ncols = max(len(knn_ks), len(reweight_ks)) if len(knn_ks) == len(reweight_ks) else None
    title = f"Clusters of 1, 2, 3 points, x × {stretch:g} (Fig. 7)"
    return plot_contour_panels(grid, panels, coreset, path, title, ncols=ncols)


def draw_paper_figures(
    output_dir: str | Path,
    box: Sequence[float] = DEFAULT_BOX,
    step: float = DEFAULT_STEP,
    n: int = 12,
    n_outliers: int = 3,
    seed: int = 0,
    knn_ks: Sequence[int] = (1, 2, 3, 5),
    reweight_ks: Sequence[int] = (2, 3, 5, 8),
    include_m_star: bool = False,
    temperature: float | None = None,
) -> list[Path]:
    """Write Figures 3–7 of the paper (and Fig. 3 with squared distances) as PNGs into ``output_dir``.

    Files: ``fig3_knn_mean.png``, ``fig3_knn_squared_mean.png``, ``fig4_alpha1.png``, ``fig5_reweighted_score.png``,
    ``fig6_weight.png``, ``fig7_stretched_clusters.png``.

    Args:
        output_dir (str | Path): Directory (created).
        box (Sequence[float]): ``(xmin, xmax, ymin, ymax)`` of Figs. 3–6; the random coreset is placed in it.
        step (float): Grid step.
        n (int): Inliers of the random coreset.
        n_outliers (int): Outliers of the random coreset.
        seed (int): Seed of the random coreset.
        knn_ks (Sequence[int]): ``k`` of Fig. 3.
        reweight_ks (Sequence[int]): ``k`` of Figs. 4–6.
        include_m_star (bool): See :func:`reweighting_terms`.
        temperature (float | None): See :func:`reweighting_terms`.

    Returns:
        list[Path]: The PNGs written.
    """
    output_dir = Path(output_dir)
    grid = make_grid(box, step)
    coreset = random_coreset(n, n_outliers, seed, box)
    rw = {"ks": reweight_ks, "include_m_star": include_m_star, "temperature": temperature}
    return [
        plot_knn_mean(grid, coreset, output_dir / "fig3_knn_mean.png", knn_ks),
        plot_knn_mean(grid, coreset, output_dir / "fig3_knn_squared_mean.png", knn_ks, squared=True),
        plot_reweighting(grid, coreset, output_dir / "fig4_alpha1.png", "alpha1", **rw),
        plot_reweighting(grid, coreset, output_dir / "fig5_reweighted_score.png", "score", **rw),
        plot_reweighting(grid, coreset, output_dir / "fig6_weight.png", "weight", **rw),
        plot_stretched_clusters(output_dir / "fig7_stretched_clusters.png", step),
    ]
