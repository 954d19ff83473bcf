# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Contour analysis of score functions: grid, hand-computed scores, agreement with DualKScorer, PNG output."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_btm.analysis.contours import (
    Coreset,
    bounding_box,
    draw_paper_figures,
    knn_mean_score,
    make_grid,
    plot_contour_panels,
    plot_reweighting,
    random_coreset,
    reweighting_terms,
    stretched_clusters,
)
from anomalib_btm.models.btm.scoring import DualKScorer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "metric_contours.py"

# Tiny coreset for hand computation.
TINY = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])


def test_grid_follows_equation_13() -> None:
    grid = make_grid((0.0, 1.0, 0.0, 0.5), step=0.005)
    assert grid.shape == (100, 200)
    assert grid.points.shape == (20000, 2)
    np.testing.assert_allclose(np.diff(grid.xs), 0.005, atol=1e-12)
    np.testing.assert_allclose(np.diff(grid.ys), 0.005, atol=1e-12)
    assert grid.xs[0] == 0.0
    assert grid.xs[-1] == pytest.approx(0.995)  # n < (x1 - x0) / step: x1 itself is excluded
    # x varies fastest, so values reshape to (ny, nx) for contourf(xs, ys, Z).
    np.testing.assert_allclose(grid.points[1], [0.005, 0.0])
    np.testing.assert_allclose(grid.points[200], [0.0, 0.005])
    np.testing.assert_array_equal(grid.reshape(grid.points[:, 0])[3], grid.xs)
    assert make_grid((-0.1, 0.1, 2.0, 2.3), step=0.01).shape == (30, 20)


@pytest.mark.parametrize("step", [0.0, -0.005, math.nan])
def test_grid_rejects_bad_step(step: float) -> None:
    with pytest.raises(ValueError, match="step must be a positive number"):
        make_grid((0.0, 1.0, 0.0, 1.0), step=step)


@pytest.mark.parametrize("box", [(1.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.5, 0.5), (0.0, 1.0, 0.0)])
def test_grid_rejects_empty_or_malformed_box(box: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="box"):
        make_grid(box)


def test_grid_refuses_huge_grids() -> None:
    with pytest.raises(ValueError, match="Raise the step or shrink the box"):
        make_grid((0.0, 100.0, 0.0, 100.0), step=0.005)


def test_knn_mean_hand_computed() -> None:
    queries = np.array([[0.0, 1.0], [1.0, 1.0]])
    # (0, 1): distances 1, √2, 1. (1, 1): √2, 1, √2.
    np.testing.assert_allclose(knn_mean_score(queries, TINY, 1), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(knn_mean_score(queries, TINY, 2), [1.0, (1 + math.sqrt(2)) / 2], atol=1e-12)
    np.testing.assert_allclose(
        knn_mean_score(queries, TINY, 3), [(2 + math.sqrt(2)) / 3, (1 + 2 * math.sqrt(2)) / 3], atol=1e-12
    )
    np.testing.assert_allclose(knn_mean_score(queries, TINY, 3, squared=True), [4 / 3, 5 / 3], atol=1e-12)


def test_k1_score_is_the_distance_to_the_nearest_point() -> None:
    grid = make_grid((-0.2, 1.2, -0.2, 1.2), step=0.05)
    coreset = random_coreset(n=8, n_outliers=2, seed=3)
    expected = np.linalg.norm(grid.points[:, None, :] - coreset.points[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(knn_mean_score(grid.points, coreset.points, 1), expected, atol=1e-9)
    # Larger k never lowers the mean distance.
    assert np.all(knn_mean_score(grid.points, coreset.points, 3) >= expected - 1e-12)


def test_reweighting_hand_computed() -> None:
    query = np.array([[0.25, 0.0]])  # m* = (0, 0), s* = 0.25; N_2((0,0)) = {(0,0), (1,0)}
    temperature = math.sqrt(2)
    d_right, d_top = 0.75, math.hypot(0.25, 2.0)

    alpha1, weight, score = reweighting_terms(query, TINY, k=2)  # BTF: m* left out of the sum
    expected_alpha = math.exp(0.25 / temperature) / math.exp(d_right / temperature)
    np.testing.assert_allclose(alpha1, [expected_alpha], atol=1e-12)
    np.testing.assert_allclose(weight, [1 - expected_alpha], atol=1e-12)
    np.testing.assert_allclose(score, [0.25 * (1 - expected_alpha)], atol=1e-12)

    alpha1, _, _ = reweighting_terms(query, TINY, k=3)
    expected_alpha = math.exp(0.25 / temperature) / (math.exp(d_right / temperature) + math.exp(d_top / temperature))
    np.testing.assert_allclose(alpha1, [expected_alpha], atol=1e-12)

    # The paper's eq. 10 as printed: m* in the sum, no scaling. k = 1 gives w = 0.
    alpha1, weight, score = reweighting_terms(query, TINY, k=1, include_m_star=True, temperature=1.0)
    np.testing.assert_allclose([alpha1[0], weight[0], score[0]], [1.0, 0.0, 0.0], atol=1e-12)
    alpha1, _, _ = reweighting_terms(query, TINY, k=2, include_m_star=True, temperature=1.0)
    np.testing.assert_allclose(alpha1, [math.exp(0.25) / (math.exp(0.25) + math.exp(0.75))], atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_reweighting_matches_dual_k_scorer(k: int) -> None:
    coreset = random_coreset(n=10, n_outliers=3, seed=1)
    bank = torch.from_numpy(coreset.points)
    rng = np.random.default_rng(k)
    queries = rng.uniform(-0.1, 1.1, size=(6, 2))
    terms = reweighting_terms(queries, coreset.points, k)
    scorer = DualKScorer(k_image=1, k_pixel=1, image_score="reweighted", n_reweight=k)
    nearest = knn_mean_score(queries, coreset.points, 1)
    for index, query in enumerate(queries):
        embedding = torch.from_numpy(query).view(1, 2, 1, 1)  # one image of one patch
        expected = float(scorer(embedding, bank).pred_score[0])
        assert terms.score[index] == pytest.approx(expected, abs=1e-12)
        assert terms.weight[index] == pytest.approx(expected / nearest[index], abs=1e-9)
        assert terms.alpha1[index] == pytest.approx(1 - expected / nearest[index], abs=1e-9)


def test_reweighting_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[2, 3\]"):
        reweighting_terms(np.zeros((1, 2)), TINY, k=1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        knn_mean_score(np.zeros((1, 2)), TINY, k=4)
    with pytest.raises(ValueError, match="same dimension"):
        knn_mean_score(np.zeros((1, 3)), TINY, k=1)


def test_random_coreset_is_seeded() -> None:
    first, again, other = random_coreset(12, 3, seed=5), random_coreset(12, 3, seed=5), random_coreset(12, 3, seed=6)
    np.testing.assert_array_equal(first.points, again.points)
    assert not np.array_equal(first.points, other.points)
    assert first.points.shape == (15, 2)
    assert first.outlier.sum() == 3
    assert not first.outlier[:12].any()
    # Outliers lie farther from the centre than any inlier.
    radius = np.linalg.norm(first.points - 0.5, axis=1)
    assert radius[first.outlier].min() > radius[~first.outlier].max()
    with pytest.raises(ValueError, match="n_outliers"):
        random_coreset(5, -1)


def test_stretched_clusters() -> None:
    clusters, base = stretched_clusters(), stretched_clusters(stretch=1.0)
    assert np.bincount(clusters.cluster).tolist() == [1, 2, 3]
    np.testing.assert_allclose(clusters.points[:, 0], 7 * base.points[:, 0])
    np.testing.assert_allclose(clusters.points[:, 1], base.points[:, 1])
    box = bounding_box(clusters.points, margin=0.25)
    assert box[0] < clusters.points[:, 0].min()
    assert box[1] > clusters.points[:, 0].max()


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()


def test_paper_figures_are_written(tmp_path: Path) -> None:
    paths = draw_paper_figures(tmp_path / "figs", step=0.02, knn_ks=(1, 3), reweight_ks=(2, 5))
    assert [p.name for p in paths] == [
        "fig3_knn_mean.png",
        "fig3_knn_squared_mean.png",
        "fig4_alpha1.png",
        "fig5_reweighted_score.png",
        "fig6_weight.png",
        "fig7_stretched_clusters.png",
    ]
    for path in paths:
        _assert_png(path)


def test_plot_arguments_are_checked(tmp_path: Path) -> None:
    grid = make_grid((0.0, 1.0, 0.0, 1.0), step=0.1)
    coreset = Coreset(points=TINY, outlier=np.array([False, False, True]), cluster=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="panels"):
        plot_contour_panels(grid, [], coreset, tmp_path / "x.png", "empty")
    with pytest.raises(ValueError, match="values"):
        plot_contour_panels(grid, [("bad", np.zeros(7))], coreset, tmp_path / "x.png", "bad")
    with pytest.raises(ValueError, match="term"):
        plot_reweighting(grid, coreset, tmp_path / "x.png", term="alpha2")


def test_example_script_writes_all_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "contours"
    argv = [str(EXAMPLE), "--output", str(out), "--step", "0.025", "--paper-formula", "--knn-ks", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--reweight-ks", "1", "3"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert exit_info.value.code == 0
    assert len(list(out.glob("*.png"))) == 6
    for path in out.glob("*.png"):
        _assert_png(path)
