# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Draw the contour plots of the BTM paper's §2.3 (Figures 3–7) around a small random 2-D coreset.

Writes into ``--output`` (default ``results/contours``):

* ``fig3_knn_mean.png``: kNN distance mean (eq. 6) for k = 1, 2, 3, 5; ``fig3_knn_squared_mean.png`` the same with
  squared distances (BTM's pixel metric);
* ``fig4_alpha1.png``, ``fig5_reweighted_score.png``, ``fig6_weight.png``: PatchCore's / BTF's α₁, reweighted score
  s and weight w (eqs. 10–12) for neighbourhood sizes k = |N_k(m*)| = 2, 3, 5, 8, in BTF's convention (m* counted
  in N_k(m*) but left out of the sum, distances scaled by √D) unless ``--paper-formula`` asks for eq. 10 as printed;
* ``fig7_stretched_clusters.png``: kNN distance mean and reweighted score around clusters of 1, 2 and 3 points
  stretched 7 times along x.

Usage::

    python examples/metric_contours.py [--output results/contours] [--box 0 1 0 1] [--step 0.005] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomalib_btm.analysis.contours import DEFAULT_BOX, DEFAULT_STEP, draw_paper_figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("results/contours"), help="Directory of the PNGs.")
    parser.add_argument(
        "--box", type=float, nargs=4, default=list(DEFAULT_BOX), metavar=("XMIN", "XMAX", "YMIN", "YMAX")
    )
    parser.add_argument("--step", type=float, default=DEFAULT_STEP, help="Grid step (the paper's: 0.005).")
    parser.add_argument("--n", type=int, default=12, help="Inliers of the random coreset.")
    parser.add_argument("--n-outliers", type=int, default=3, help="Outliers of the random coreset (orange).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-ks", type=int, nargs="+", default=[1, 2, 3, 5], help="k of Fig. 3.")
    parser.add_argument("--reweight-ks", type=int, nargs="+", default=[2, 3, 5, 8], help="k of Figs. 4–6.")
    parser.add_argument(
        "--paper-formula",
        action="store_true",
        help="Figs. 4–6 with eq. 10 as printed (m* in the sum, no √D scaling) instead of BTF's code.",
    )
    args = parser.parse_args(argv)
    paths = draw_paper_figures(
        args.output,
        box=args.box,
        step=args.step,
        n=args.n,
        n_outliers=args.n_outliers,
        seed=args.seed,
        knn_ks=args.knn_ks,
        reweight_ks=args.reweight_ks,
        include_m_star=args.paper_formula,
        temperature=1.0 if args.paper_formula else None,
    )
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
