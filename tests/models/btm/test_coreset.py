# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for the flat-memory greedy k-center coreset (same selection as anomalib's ``KCenterGreedy``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection
from anomalib.models.components.sampling import KCenterGreedy as AnomalibKCenterGreedy

from anomalib_btm.models.btm.coreset import KCenterGreedy, sample_coreset, sparse_random_projection_matrix

REPO_ROOT = Path(__file__).resolve().parents[3]


def _seed_all(seed: int) -> None:
    # anomalib draws from torch's global generator AND NumPy's (sklearn's sample_without_replacement with
    # random_state=None), so both must be reset for two runs to be comparable.
    torch.manual_seed(seed)
    np.random.seed(seed)


def _embedding(n: int, d: int, seed: int = 1234) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _anomalib_idxs(embedding: torch.Tensor, ratio: float, seed: int) -> list[int]:
    _seed_all(seed)
    return AnomalibKCenterGreedy(embedding=embedding, sampling_ratio=ratio).select_coreset_idxs()


def _our_idxs(embedding: torch.Tensor, ratio: float, seed: int, **kwargs: object) -> list[int]:
    _seed_all(seed)
    return KCenterGreedy(embedding, ratio, **kwargs).select_coreset_idxs()


@pytest.mark.parametrize(
    ("n", "d", "ratio"),
    [(500, 64, 0.01), (500, 64, 0.1), (500, 64, 0.5), (1000, 1569, 0.01), (1000, 1569, 0.1), (300, 1, 0.1)],
)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_same_selection_as_anomalib(n: int, d: int, ratio: float, seed: int) -> None:
    embedding = _embedding(n, d, seed=seed + 100)
    expected = _anomalib_idxs(embedding, ratio, seed)
    assert len(expected) == int(n * ratio)
    assert _our_idxs(embedding, ratio, seed) == expected


def test_same_selection_as_anomalib_larger() -> None:
    embedding = _embedding(8000, 256)
    assert _our_idxs(embedding, 0.05, 3) == _anomalib_idxs(embedding, 0.05, 3)


@pytest.mark.parametrize("chunk_bytes", [1, 4096, 100_000, 10**9])
def test_chunking_does_not_change_selection(chunk_bytes: int) -> None:
    embedding = _embedding(1000, 64)
    assert _our_idxs(embedding, 0.1, 5, chunk_bytes=chunk_bytes) == _anomalib_idxs(embedding, 0.1, 5)


def test_ties_and_duplicates_match_anomalib() -> None:
    # 50 distinct integer-valued rows, each repeated 6 times: exact distance ties, and min distances that all
    # reach zero before the 150-point coreset is complete.
    base = torch.randint(-3, 4, (50, 16), generator=torch.Generator().manual_seed(0)).float()
    embedding = base.repeat(6, 1)
    for seed in (0, 1):
        assert _our_idxs(embedding, 0.5, seed) == _anomalib_idxs(embedding, 0.5, seed)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # anomalib, for a single sample (0 components)
def test_tiny_embeddings_match_anomalib() -> None:
    for n, d in [(1, 5), (2, 3), (3, 1)]:
        embedding = _embedding(n, d)
        assert _our_idxs(embedding, 1.0, 0) == _anomalib_idxs(embedding, 1.0, 0)


@pytest.mark.parametrize(("n", "d"), [(500, 64), (1000, 1569), (40, 1)])
def test_projection_matrix_matches_anomalib(n: int, d: int) -> None:
    _seed_all(11)
    reference = SparseRandomProjection(eps=0.9).fit(torch.zeros(n, d)).sparse_random_matrix
    _seed_all(11)
    ours = sparse_random_projection_matrix(n, d)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, reference)


def test_seed_argument_matches_global_seeding_and_keeps_global_state() -> None:
    embedding = _embedding(600, 32)
    expected = _anomalib_idxs(embedding, 0.1, 42)
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    assert KCenterGreedy(embedding, 0.1, seed=42).select_coreset_idxs() == expected
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_numpy_global_state_matters_like_in_anomalib() -> None:
    # Documented behaviour: both implementations also read NumPy's global generator (projection columns).
    embedding = _embedding(500, 64)
    torch.manual_seed(0)
    np.random.seed(1)
    a = KCenterGreedy(embedding, 0.1).select_coreset_idxs()
    torch.manual_seed(0)
    np.random.seed(1)
    b = AnomalibKCenterGreedy(embedding, 0.1).select_coreset_idxs()
    assert a == b


def test_sample_coreset_returns_full_dimensional_rows() -> None:
    embedding = _embedding(400, 48)
    _seed_all(3)
    sampler = KCenterGreedy(embedding, 0.05)
    coreset = sampler.sample_coreset()
    _seed_all(3)
    idxs = AnomalibKCenterGreedy(embedding, 0.05).select_coreset_idxs()
    assert coreset.shape == (20, 48)
    assert coreset.dtype == embedding.dtype
    assert torch.equal(coreset, embedding[idxs])


def test_sample_coreset_function() -> None:
    embedding = _embedding(400, 48)
    coreset = sample_coreset(embedding, 0.05, seed=9)
    _seed_all(9)
    assert torch.equal(coreset, embedding[AnomalibKCenterGreedy(embedding, 0.05).select_coreset_idxs()])
    assert torch.equal(sample_coreset(embedding, 0.05, seed=9), coreset)


def test_selected_idxs_continue_the_greedy_sequence() -> None:
    embedding = _embedding(1000, 32)
    full = KCenterGreedy(embedding, 0.101, seed=2).select_coreset_idxs()  # 101 points, the first one random
    continued = KCenterGreedy(embedding, 0.1, seed=2).select_coreset_idxs(selected_idxs=[full[0]])
    assert continued == full[1:]
    assert full[0] not in continued
    coreset = KCenterGreedy(embedding, 0.1, seed=2).sample_coreset(selected_idxs=[full[0]])
    assert torch.equal(coreset, embedding[full[1:]])


def test_empty_selected_idxs_is_like_none() -> None:
    embedding = _embedding(300, 8)
    expected = KCenterGreedy(embedding, 0.1, seed=4).select_coreset_idxs()
    assert KCenterGreedy(embedding, 0.1, seed=4).select_coreset_idxs(selected_idxs=[]) == expected


def test_selected_idxs_several_centers() -> None:
    embedding = _embedding(300, 8)
    given = [5, 17, 200]
    picked = KCenterGreedy(embedding, 0.1, seed=0).select_coreset_idxs(selected_idxs=given)
    assert len(picked) == 30
    assert not set(picked) & set(given)
    # Greedy check on the projected features: each pick is the farthest point from all earlier centers.
    sampler = KCenterGreedy(embedding, 0.1, seed=0)
    sampler.select_coreset_idxs(selected_idxs=given)
    features = sampler.features
    assert features is not None
    centers = list(given)
    for idx in picked:
        min_d = torch.cdist(features, features[centers]).min(dim=1).values
        assert min_d[idx] >= min_d.max() * (1 - 1e-5)
        centers.append(idx)


@pytest.mark.parametrize(
    ("selected", "match"),
    [([1000], "selected_idxs"), ([-1001], "selected_idxs"), (list(range(950)), "fewer than the 100")],
)
def test_selected_idxs_errors(selected: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KCenterGreedy(_embedding(1000, 8), 0.1).select_coreset_idxs(selected_idxs=selected)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    embedding = _embedding(200, 8)
    KCenterGreedy(embedding, 0.1, seed=0).select_coreset_idxs()
    assert capsys.readouterr().err == ""
    KCenterGreedy(embedding, 0.1, seed=0, progress=True).select_coreset_idxs()
    err = capsys.readouterr().err
    assert "Selecting coreset" in err
    assert "20/20" in err


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_bad_sampling_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"`sampling_ratio` must be in \(0, 1\]"):
        KCenterGreedy(_embedding(10, 4), ratio)


def test_sampling_ratio_wrong_type() -> None:
    with pytest.raises(TypeError, match="sampling_ratio"):
        KCenterGreedy(_embedding(10, 4), "0.1")  # type: ignore[arg-type]


def test_ratio_selecting_nothing_suggests_a_ratio() -> None:
    with pytest.raises(ValueError, match=r"selects int\(500 \* 0.001\) = 0 samples") as info:
        KCenterGreedy(_embedding(500, 4), 0.001)
    suggested = float(str(info.value).split("sampling_ratio >= ")[1].split(" ")[0])
    assert int(500 * suggested) == 1
    for n in (3, 49, 500, 98_765):
        with pytest.raises(ValueError, match="sampling_ratio >= ") as info:
            KCenterGreedy(torch.zeros(n, 1), 0.5 / n)
        suggested = float(str(info.value).split("sampling_ratio >= ")[1].split(" ")[0])
        assert int(n * suggested) == 1


@pytest.mark.parametrize("shape", [(0, 8), (8, 0)])
def test_empty_embedding(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="`embedding` must be non-empty"):
        KCenterGreedy(torch.zeros(shape), 0.5)


@pytest.mark.parametrize("shape", [(10,), (2, 5, 4), ()])
def test_embedding_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="`embedding` must be a 2-D tensor"):
        KCenterGreedy(torch.zeros(shape), 0.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_embedding(bad: float) -> None:
    embedding = _embedding(100, 4)
    embedding[37, 2] = bad
    embedding[80, 0] = bad
    with pytest.raises(ValueError, match=r"`embedding` contains NaN or inf values \(first in row 37\)"):
        KCenterGreedy(embedding, 0.1)


def test_non_tensor_and_integer_embedding() -> None:
    with pytest.raises(TypeError, match=r"`embedding` must be a torch\.Tensor"):
        KCenterGreedy(np.zeros((10, 4)), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating point"):
        KCenterGreedy(torch.zeros(10, 4, dtype=torch.int64), 0.5)


def test_bad_chunk_bytes() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        KCenterGreedy(_embedding(10, 4), 0.5, chunk_bytes=0)


def test_accelerator_same_selection_as_anomalib() -> None:
    # On CUDA where a GPU is present (never required); on the CPU otherwise, through the same device-agnostic path.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    embedding = _embedding(2000, 64).to(device)
    expected = _anomalib_idxs(embedding, 0.05, 0)
    assert _our_idxs(embedding, 0.05, 0) == expected
    assert KCenterGreedy(embedding, 0.05, seed=0).select_coreset_idxs() == expected
    coreset = KCenterGreedy(embedding, 0.05, seed=0).sample_coreset()
    assert coreset.device == embedding.device
    assert torch.equal(coreset, embedding[expected])


def _bytes_allocated(fn: object) -> int:
    """Total bytes the torch CPU allocator handed out while ``fn`` ran (sum of positive per-op allocations)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # type: ignore[operator]
    return sum(event.self_cpu_memory_usage for event in prof.events() if event.self_cpu_memory_usage > 0)


def test_no_allocation_per_step() -> None:
    # Deterministic: count what the allocator hands out. anomalib allocates an N x k temporary at every step
    # (about 4 GB in total for this 1,000-step case); ours allocates its buffers once, so the total must not
    # depend on the number of steps beyond the 8-byte index of each pick.
    embedding = _embedding(5000, 64)
    few = _bytes_allocated(lambda: KCenterGreedy(embedding, 0.01, seed=0).select_coreset_idxs())
    sampler = KCenterGreedy(embedding, 0.2, seed=0)
    many = _bytes_allocated(sampler.select_coreset_idxs)
    assert sampler.features is not None
    features_bytes = sampler.features.numel() * sampler.features.element_size()
    assert many - few <= 8 * 1000 + 64 * 1024, (few, many)
    # features + same-size work buffer + projection matrix and small buffers
    assert many <= 2 * features_bytes + 1024 * 1024, (few, many, features_bytes)


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from anomalib_btm.models.btm.coreset import KCenterGreedy

    n, d, ratio = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    embedding = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    KCenterGreedy(torch.randn(64, d), 0.5, seed=0).select_coreset_idxs()  # warm up kernels and allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = KCenterGreedy(embedding, ratio, seed=0)
    sampler.select_coreset_idxs()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    features_kib = sampler.features.numel() * 4 // 1024
    print(json.dumps({"growth_kib": after - before, "features_kib": features_kib}))
    """
)


def _peak_rss_growth_kib(n: int, d: int, ratio: float) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n), str(d), str(ratio)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=600,
    )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["growth_kib"], data["features_kib"]


def test_peak_memory_does_not_grow_with_iterations() -> None:
    # 20k x 256: the projected features are 20k x 244 floats (19 MiB); the work buffer is at most as large.
    # anomalib allocates another 19 MiB temporary at every step. Our peak growth must stay
    # near features + work buffer, and must not depend on the number of steps (1 % vs 5 % coreset).
    growth_small, features_kib = _peak_rss_growth_kib(20_000, 256, 0.01)
    growth_large, _ = _peak_rss_growth_kib(20_000, 256, 0.05)
    slack_kib = 32 * 1024
    assert growth_small <= 2 * features_kib + slack_kib, (growth_small, features_kib)
    assert growth_large <= 2 * features_kib + slack_kib, (growth_large, features_kib)
    assert abs(growth_large - growth_small) <= 16 * 1024, (growth_small, growth_large)


def _clustered(n_clusters: int, per_cluster: int, d: int, seed: int = 7) -> torch.Tensor:
    """Patch-like features: tight clusters around spread centres (where the pruning skips most distances)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, 1, d, generator=generator) * 4
    return (centres + 0.5 * torch.randn(n_clusters, per_cluster, d, generator=generator)).reshape(-1, d)


@pytest.mark.parametrize(
    ("embedding", "ratio", "seed"),
    [
        (_clustered(30, 100, 64), 0.1, 0),
        (_clustered(30, 100, 64), 0.02, 5),
        (_embedding(1500, 48), 0.05, 3),  # unstructured: little to prune, same selection
        (_clustered(8, 40, 1569), 0.25, 1),  # BTM's width: projected to fewer dimensions
    ],
)
def test_pruned_selects_what_the_plain_loop_selects(embedding: torch.Tensor, ratio: float, seed: int) -> None:
    """``coreset_method="pruned"`` returns the exact loop's indices, in order, with the same seed."""
    from anomalib_btm.models.btm.coreset import PrunedKCenterGreedy

    pruned = PrunedKCenterGreedy(embedding, ratio, seed=seed)
    picks = pruned.select_coreset_idxs()
    assert picks == [int(i) for i in KCenterGreedy(embedding, ratio, seed=seed).select_coreset_idxs()]
    assert len(picks) == int(embedding.shape[0] * ratio)
    assert 0 < pruned.measured <= embedding.shape[0] * len(picks)


def test_pruned_measures_a_fraction_of_the_distances_on_clustered_features() -> None:
    """Triangle-inequality pruning skips most distance evaluations on patch-like features."""
    from anomalib_btm.models.btm.coreset import PrunedKCenterGreedy

    embedding = _clustered(60, 100, 128)
    pruned = PrunedKCenterGreedy(embedding, 0.1, seed=0)
    picks = pruned.select_coreset_idxs()
    assert pruned.measured < 0.5 * embedding.shape[0] * len(picks)


def test_pruned_selection_follows_the_global_order_not_the_storage_order() -> None:
    """Rows stored in another order but tagged with their global positions give the same global picks and rows."""
    from anomalib_btm.models.btm.coreset import PrunedKCenterGreedy

    embedding = _clustered(20, 50, 32)
    embedding[500:600] = embedding[0]  # identical patches (a flat background): exact ties, broken by global index
    permutation = torch.randperm(embedding.shape[0], generator=torch.Generator().manual_seed(3))
    reference = PrunedKCenterGreedy(embedding, 0.05, seed=11)
    stored = PrunedKCenterGreedy(embedding[permutation], 0.05, seed=11, global_index=permutation.numpy())
    assert stored.select_coreset_idxs() == reference.select_coreset_idxs()
    rows = PrunedKCenterGreedy(embedding[permutation], 0.05, seed=11, global_index=permutation.numpy())
    assert torch.equal(rows.sample_coreset(), reference.sample_coreset())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_rows": 0}, "block_rows"),
        ({"global_index": np.arange(5)}, "global_index"),
        ({"exchange": lambda value, index, row: (index, row)}, "needs a seed shared by every process"),
    ],
)
def test_pruned_bad_arguments(kwargs: dict, match: str) -> None:
    """Wrong block sizes, positions or a distributed run without a seed are named."""
    from anomalib_btm.models.btm.coreset import PrunedKCenterGreedy

    with pytest.raises(ValueError, match=match):
        PrunedKCenterGreedy(_embedding(100, 8), 0.1, **kwargs)


def test_unknown_coreset_method_is_refused() -> None:
    """``coreset_method`` other than pruned/exact fails when the model is built, with the choices."""
    from anomalib_btm import BTM

    with pytest.raises(ValueError, match=r"coreset_method must be one of \('pruned', 'exact'\), got 'fast'"):
        BTM(backbone="resnet18", pre_trained=False, coreset_method="fast")
