# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Greedy k-center coreset selection with flat memory.

A drop-in replacement for :class:`anomalib.models.components.sampling.KCenterGreedy` that selects exactly the same
indices for the same random state, but allocates all of its buffers once:

1. The embedding ``(N, D)`` is projected to ``k`` Johnson-Lindenstrauss dimensions (``eps = 0.9``) with the very
   sparse random matrix of anomalib's own
   :class:`~anomalib.models.components.dimensionality_reduction.SparseRandomProjection`.
2. The first center is drawn with ``torch.randint`` on the embedding's device (as anomalib does); every further
   center is the point farthest from all centers chosen so far (greedy farthest-point / k-center).

anomalib computes ``torch.linalg.norm(features - center, dim=1)`` on the whole ``(N, k)`` feature matrix at every
step, allocating a fresh ``N x k`` temporary each time. Here the distances are computed into a work buffer allocated
once (on CPU chunk by chunk, at most 256 MiB; ``torch.sub(..., out=)`` then ``torch.linalg.vector_norm(..., out=)``)
and folded into a preallocated min-distance buffer with ``torch.minimum(..., out=)``. The arithmetic is the same
elementwise subtraction and the same row-wise norm kernel, so the distances, and therefore the selection (including
ties, which ``torch.max`` breaks the same way), are bit-identical to anomalib's. Nothing proportional to ``N`` is
allocated per step.

Random state. anomalib draws from *two* global generators: torch's (the number of non-zeros of every projection row,
their signs, and the first center) and NumPy's (the column positions of the non-zeros, via
:func:`sklearn.utils.random.sample_without_replacement` with ``random_state=None``). With ``seed=None`` this module
consumes both global generators exactly like anomalib, so ``torch.manual_seed(s); np.random.seed(s)`` before either
implementation gives the same coreset. With ``seed=s`` both global generators are seeded with ``s`` for the draws
only (:func:`seeded_rng`: ``torch.random.fork_rng`` and NumPy's saved state) and restored afterwards; the result
equals anomalib's after ``torch.manual_seed(s); np.random.seed(s)``, on every process and for both methods.

Example:
    >>> import torch
    >>> from anomalib_btm.models.btm.coreset import sample_coreset
    >>> embedding = torch.randn(1000, 64)
    >>> sample_coreset(embedding, 0.1, seed=0).shape
    torch.Size([100, 64])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection
from tqdm import tqdm

from anomalib_btm.checks import check_choice

from .coreset_kernels import _add_center, _center_distances, _farthest, _first_center

__all__ = [
    "CORESET_METHODS",
    "KCenterGreedy",
    "PrunedKCenterGreedy",
    "check_coreset_method",
    "project_blocks",
    "sample_coreset",
    "seeded_rng",
    "sparse_random_projection_matrix",
]

PROJECTION_EPS = 0.9
"""Johnson-Lindenstrauss distortion used by anomalib's coreset sampler."""

CHUNK_BYTES = 256 * 1024**2
"""Default size of the distance work buffer on CPU (256 MiB).

Every step runs two large ops per chunk (subtraction and norm), each a parallel region ending in a thread barrier.
Small, cache-sized chunks are fastest on an idle CPU but collapse when the cores are oversubscribed, because every
barrier waits for a descheduled thread (many small chunks per step were markedly slower than one large chunk on
a loaded 2-core machine). Large chunks keep the number of barriers per step small; 256 MiB
bounds the extra memory.
"""

SERIAL_SLICE = 16_384
"""Elements per elementwise-minimum call on CPU: half of ``at::internal::GRAIN_SIZE``, so each call runs serially."""

CHECK_CHUNK_BYTES = 64 * 1024**2
"""Rows checked at once for NaN / inf (the boolean mask is a quarter of this for float32)."""


@contextmanager
def seeded_rng(seed: int | None) -> Iterator[None]:
    """Seed torch's global CPU generator and NumPy's global generator with ``seed`` for a block, then restore both.

    The random calls of anomalib's coreset go to these two generators; seeding both with the same ``seed`` gives
    the same draws on every process and for both coreset methods. ``None``: the generators as they are.

    Args:
        seed: Seed, or ``None`` to leave the generators alone.

    Yields:
        Nothing; the block runs with the seeded generators.

    Example:
        >>> with seeded_rng(3):
        ...     first = torch.rand(1)
        >>> with seeded_rng(3):
        ...     bool(torch.rand(1) == first)
        True
    """
    if seed is None:
        yield
        return
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def sparse_random_projection_matrix(n_samples: int, n_features: int, *, eps: float = PROJECTION_EPS) -> torch.Tensor:
    """The very sparse random projection matrix of anomalib's coreset sampler, drawn by anomalib's own class.

    :class:`~anomalib.models.components.dimensionality_reduction.SparseRandomProjection` (Li et al., "Very sparse
    random projections", KDD 2006): Johnson-Lindenstrauss components for ``n_samples`` and ``eps``, density
    ``1 / sqrt(n_features)``. It draws from torch's and NumPy's global generators: run it under
    :func:`seeded_rng` for a matrix that depends on a seed only.

    Args:
        n_samples: Number of rows of the embedding to project (sets the output dimension).
        n_features: Number of columns of the embedding.
        eps: Johnson-Lindenstrauss distortion. Defaults to ``0.9``.

    Returns:
        Dense float32 CPU tensor of shape ``(n_components, n_features)``.
    """
    if n_samples < 2:  # no component for a single sample: nothing to draw (anomalib would divide by zero)
        return torch.zeros((0, n_features), dtype=torch.float32)
    shape_only = torch.zeros(()).expand(n_samples, n_features)  # fit reads the shape and device only
    return SparseRandomProjection(eps=eps).fit(shape_only).sparse_random_matrix


def _min_ratio_selecting_one(n_samples: int) -> float:
    """Return the smallest float ratio ``r`` with ``int(n_samples * r) >= 1``.

    Args:
        n_samples: Number of rows.

    Returns:
        The ratio.
    """
    ratio = 1.0 / n_samples
    while int(n_samples * ratio) < 1:
        ratio = math.nextafter(ratio, 2.0)
    return ratio


def _validate(embedding: object, sampling_ratio: object) -> int:
    """Check the arguments of :class:`KCenterGreedy` and return the coreset size.

    Args:
        embedding: Candidate embedding.
        sampling_ratio: Candidate sampling ratio.

    Returns:
        ``int(n_samples * sampling_ratio)``.

    Raises:
        TypeError: If ``embedding`` is not a tensor or ``sampling_ratio`` is not a real number.
        ValueError: If an argument has an invalid value.
    """
    if not isinstance(embedding, torch.Tensor):
        msg = f"`embedding` must be a torch.Tensor, got {type(embedding).__name__}."
        raise TypeError(msg)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, float, np.integer, np.floating)):
        msg = f"`sampling_ratio` must be a real number in (0, 1], got {sampling_ratio!r}."
        raise TypeError(msg)
    ratio = float(sampling_ratio)
    if not 0.0 < ratio <= 1.0:
        msg = f"`sampling_ratio` must be in (0, 1], got {sampling_ratio!r}."
        raise ValueError(msg)
    if embedding.ndim != 2:
        msg = (
            "`embedding` must be a 2-D tensor of shape (n_samples, n_features), "
            f"got a {embedding.ndim}-D tensor of shape {tuple(embedding.shape)}."
        )
        raise ValueError(msg)
    n_samples, n_features = embedding.shape
    if n_samples == 0 or n_features == 0:
        msg = f"`embedding` must be non-empty, got shape {tuple(embedding.shape)}."
        raise ValueError(msg)
    if not embedding.is_floating_point():
        msg = f"`embedding` must have a floating point dtype, got {embedding.dtype}."
        raise ValueError(msg)
    coreset_size = int(n_samples * ratio)
    if coreset_size < 1:
        msg = (
            f"`sampling_ratio`={sampling_ratio!r} selects int({n_samples} * {sampling_ratio!r}) = 0 samples from an "
            f"`embedding` of {n_samples} rows; use sampling_ratio >= {_min_ratio_selecting_one(n_samples)!r} to "
            "select at least one."
        )
        raise ValueError(msg)
    bad_row = _first_non_finite_row(embedding)
    if bad_row is not None:
        msg = f"`embedding` contains NaN or inf values (first in row {bad_row}); remove or repair those rows."
        raise ValueError(msg)
    return coreset_size


def _row_chunks(n_rows: int, row_bytes: int, budget_bytes: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` row ranges whose size is about ``budget_bytes``.

    Args:
        n_rows: Number of rows.
        row_bytes: Bytes per row.
        budget_bytes: Target bytes per chunk.

    Yields:
        Half-open row ranges covering ``range(n_rows)``.
    """
    step = max(1, budget_bytes // max(1, row_bytes))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _first_non_finite_row(embedding: torch.Tensor) -> int | None:
    """Return the index of the first row holding NaN or inf, checking in chunks to keep memory flat.

    Args:
        embedding: 2-D floating point tensor.

    Returns:
        Row index, or ``None`` if every value is finite.
    """
    row_bytes = embedding.shape[1] * embedding.element_size()
    for start, stop in _row_chunks(embedding.shape[0], row_bytes, CHECK_CHUNK_BYTES):
        finite = torch.isfinite(embedding[start:stop]).all(dim=1)
        if not bool(finite.all()):
            return start + int(torch.nonzero(~finite)[0, 0])
    return None


class KCenterGreedy:
    """Greedy k-center coreset selection with the selection of anomalib's ``KCenterGreedy`` and flat memory.

    Args:
        embedding: Embedding of shape ``(n_samples, n_features)``, float, finite, on any device.
        sampling_ratio: Fraction of rows to select, in ``(0, 1]``; the coreset has ``int(n_samples *
            sampling_ratio)`` rows.
        seed: If given, draw with the global generators seeded with it and restored afterwards (:func:`seeded_rng`);
            the selection then equals anomalib's after ``torch.manual_seed(seed); np.random.seed(seed)``. If
            ``None`` (default), consume torch's and NumPy's global generators exactly as anomalib does.
        progress: Show a tqdm progress bar of the selection. Defaults to ``False``.
        chunk_bytes: Size in bytes of the distance work buffer; ``None`` for 256 MiB on CPU (or less if the
            projected features are smaller) and the whole ``N x k`` on accelerators. On CPU it changes speed and
            memory, never the result (the row-wise norm kernel rounds each row the same way whatever the number
            of rows; on accelerators this is only guaranteed for the default).

    Attributes:
        embedding: The input embedding.
        coreset_size: Number of indices :meth:`select_coreset_idxs` returns.
        n_observations: Number of rows of ``embedding``.
        projection: The random projection matrix ``(n_components, n_features)`` of the last selection.
        features: The projected embedding ``(n_samples, n_components)`` of the last selection.
        min_distances: Distance of every row to its nearest selected center after the last selection.

    Raises:
        TypeError: If ``embedding`` is not a tensor or ``sampling_ratio`` is not a number.
        ValueError: If ``sampling_ratio`` is not in ``(0, 1]`` or selects no row, or ``embedding`` is not 2-D,
            empty, not floating point, or holds NaN / inf.

    Example:
        >>> import torch
        >>> embedding = torch.randn(2000, 128)
        >>> sampler = KCenterGreedy(embedding, sampling_ratio=0.01, seed=0)
        >>> len(sampler.select_coreset_idxs())
        20
    """

    def __init__(
        self,
        embedding: torch.Tensor,
        sampling_ratio: float,
        *,
        seed: int | None = None,
        progress: bool = False,
        chunk_bytes: int | None = None,
    ) -> None:
        self.coreset_size = _validate(embedding, sampling_ratio)
        if chunk_bytes is not None and chunk_bytes <= 0:
            msg = f"`chunk_bytes` must be a positive number of bytes, got {chunk_bytes!r}."
            raise ValueError(msg)
        self.embedding = embedding
        self.sampling_ratio = float(sampling_ratio)
        self.n_observations = embedding.shape[0]
        self.seed = seed
        self.progress = progress
        self.chunk_bytes = chunk_bytes
        self.projection: torch.Tensor | None = None
        self.features: torch.Tensor | None = None
        self.min_distances: torch.Tensor | None = None

    def _project(self) -> torch.Tensor:
        """Draw the projection matrix and project the embedding (one ``N x k`` allocation).

        Returns:
            Projected features ``(n_samples, n_components)`` in the embedding's dtype, on its device.
        """
        n_samples, n_features = self.embedding.shape
        self.projection = sparse_random_projection_matrix(n_samples, n_features).to(self.embedding.device)
        # Same expression as anomalib's transform, so the BLAS call (and its rounding) is the same.
        return self.embedding @ self.projection.T.type(self.embedding.dtype)

    def select_coreset_idxs(self, selected_idxs: list[int] | None = None) -> list[int]:
        """Greedily select the coreset indices.

        Args:
            selected_idxs: Indices already in the coreset. If ``None`` (default), the first center is drawn at
                random (anomalib's behaviour) and is part of the result; an empty list means the same. Otherwise no
                random center is drawn: the given rows are the initial centers, and ``coreset_size`` *new* indices
                are returned (they only repeat given ones if all distances reach zero, e.g. with duplicate rows).

        Returns:
            ``coreset_size`` row indices in selection order.

        Raises:
            ValueError: If ``selected_idxs`` holds an out-of-range index or leaves fewer than ``coreset_size``
                rows to choose from.
        """
        n = self.n_observations
        if selected_idxs is not None and len(selected_idxs) == 0:
            selected_idxs = None  # nothing selected yet: start from a random point, as anomalib does
        if selected_idxs is not None:
            bad = [i for i in selected_idxs if not -n <= int(i) < n]
            if bad:
                msg = f"`selected_idxs` must index rows of `embedding` (0 <= i < {n}), got {bad[:5]}."
                raise ValueError(msg)
            selected_idxs = sorted({int(i) % n for i in selected_idxs})
            if n - len(selected_idxs) < self.coreset_size:
                msg = (
                    f"`selected_idxs` leaves {n - len(selected_idxs)} of {n} rows, fewer than the "
                    f"{self.coreset_size} to select."
                )
                raise ValueError(msg)

        device = self.embedding.device
        with seeded_rng(self.seed):
            features = self._project()
            if selected_idxs is None:
                # anomalib: idx = torch.randint(high=n, size=(1,), device=features.device); on an accelerator the
                # seeded draw uses a generator of that device seeded alike.
                seeded = self.seed is not None and device.type != "cpu"
                generator = torch.Generator(device=device).manual_seed(self.seed) if seeded else None
                first = torch.randint(high=n, size=(1,), device=device, generator=generator)
        self.features = features
        n_components = features.shape[1]

        # All buffers are allocated once, here.
        row_bytes = max(1, n_components) * features.element_size()
        budget = self.chunk_bytes
        if budget is None:
            # On accelerators one chunk: the reduction kernel's launch configuration (and so its summation order)
            # may depend on the number of rows, so only anomalib's exact shape is guaranteed to round the same.
            # anomalib allocates this N x k temporary at every step anyway (its caching allocator reuses it).
            budget = CHUNK_BYTES if device.type == "cpu" else n * row_bytes
        chunks = list(_row_chunks(n, row_bytes, budget))
        chunk_rows = chunks[0][1] - chunks[0][0]
        work = torch.empty((chunk_rows, n_components), dtype=features.dtype, device=device)
        distances = torch.empty(chunk_rows, dtype=features.dtype, device=device)
        min_distances = torch.full((n,), math.inf, dtype=features.dtype, device=device)
        center = torch.empty((1, n_components), dtype=features.dtype, device=device)
        max_value = torch.empty((), dtype=features.dtype, device=device)
        idx = torch.empty((), dtype=torch.int64, device=device)
        n_picks = self.coreset_size if selected_idxs is None else self.coreset_size + len(selected_idxs)
        picks = torch.empty(n_picks, dtype=torch.int64, device=device)
        self.min_distances = min_distances

        # Views into the buffers, made once: (features rows, work rows, distances, [(min_distances, distances)]).
        # The elementwise minimum is cheap, so on CPU it runs on slices below torch's parallel grain size: serial,
        # no thread barrier (a parallel minimum costs far more than the serial one on a loaded machine).
        fold = SERIAL_SLICE if device.type == "cpu" else max(1, chunk_rows)
        plan = []
        for start, stop in chunks:
            rows = stop - start
            folds = [
                (min_distances[start + lo : start + min(lo + fold, rows)], distances[lo : min(lo + fold, rows)])
                for lo in range(0, rows, fold)
            ]
            plan.append((features[start:stop], work[:rows], distances[:rows], folds))

        def add_center(index: torch.Tensor) -> None:
            """Fold the distances to row ``index`` (a 1-element int64 tensor) into ``min_distances``."""
            torch.index_select(features, 0, index, out=center)
            for feature_rows, work_rows, chunk_distances, folds in plan:
                torch.sub(feature_rows, center, out=work_rows)
                torch.linalg.vector_norm(work_rows, ord=2, dim=1, out=chunk_distances)
                for min_part, distance_part in folds:
                    torch.minimum(min_part, distance_part, out=min_part)

        if selected_idxs is None:
            picks[:1] = first
            n_done = 1
        else:
            picks[: len(selected_idxs)] = torch.tensor(selected_idxs, dtype=torch.int64)
            n_done = len(selected_idxs)
            for i in range(n_done - 1):
                add_center(picks[i : i + 1])
            min_distances.index_fill_(0, picks[:n_done], 0.0)

        with tqdm(
            total=self.coreset_size,
            initial=1 if selected_idxs is None else 0,
            desc="Selecting coreset",
            unit="pts",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        ) as bar:
            for i in range(n_done, n_picks):
                add_center(picks[i - 1 : i])
                torch.max(min_distances, dim=0, out=(max_value, idx))
                min_distances.index_fill_(0, idx.view(1), 0.0)
                picks[i] = idx
                bar.update(1)

        start = 0 if selected_idxs is None else len(selected_idxs)
        return picks[start:].tolist()

    def sample_coreset(self, selected_idxs: list[int] | None = None) -> torch.Tensor:
        """Select the coreset and return its rows.

        Args:
            selected_idxs: See :meth:`select_coreset_idxs`.

        Returns:
            The selected rows of ``embedding``, full dimensional: ``(coreset_size, n_features)``.
        """
        idxs = self.select_coreset_idxs(selected_idxs)
        return self.embedding[torch.tensor(idxs, dtype=torch.int64, device=self.embedding.device)]


def sample_coreset(
    embedding: torch.Tensor,
    sampling_ratio: float,
    *,
    progress: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Return a greedy k-center coreset of ``embedding`` (the rows anomalib's ``KCenterGreedy`` would pick).

    Args:
        embedding: Embedding of shape ``(n_samples, n_features)``.
        sampling_ratio: Fraction of rows to keep, in ``(0, 1]``.
        progress: Show a progress bar. Defaults to ``False``.
        seed: Seed of the random draws (:func:`seeded_rng`); ``None`` (default) uses the global torch and NumPy
            generators as they are.

    Returns:
        Tensor ``(int(n_samples * sampling_ratio), n_features)`` of rows of ``embedding``.
    """
    return KCenterGreedy(embedding, sampling_ratio, seed=seed, progress=progress).sample_coreset()


CORESET_METHODS = ("pruned", "exact")
"""``"pruned"``: greedy k-center with triangle-inequality pruning (:class:`PrunedKCenterGreedy`, default);
``"exact"``: the plain greedy loop with anomalib's arithmetic (:class:`KCenterGreedy`)."""

PROJECTION_BLOCK_ROWS = 4096
"""Rows projected per matrix product when no block size is given (the block size fixes the rounding of a row)."""

Exchange = Callable[[float, int, np.ndarray], tuple[int, np.ndarray]]
"""``exchange(value, index, row) -> (index, row)``: the farthest point over all processes (see
:class:`PrunedKCenterGreedy`)."""


def check_coreset_method(method: str) -> None:
    """Raise a clear error for an unknown coreset method.

    Args:
        method: Candidate method.

    Raises:
        ValueError: If ``method`` is not one of :data:`CORESET_METHODS`.
    """
    check_choice("coreset_method", method, CORESET_METHODS)


def project_blocks(embedding: torch.Tensor, projection: torch.Tensor, block_rows: int) -> np.ndarray:
    """Project ``embedding`` on ``projection`` block by block into one float32 array.

    Every block is one ``(block_rows, D) @ (D, k)`` product (the last may be shorter), so a row is rounded the same
    whichever process holds it, as long as blocks start at the same rows (whole samples in BTM).

    Args:
        embedding: ``(N, D)`` float32 or float16 features.
        projection: ``(k, D)`` projection matrix.
        block_rows: Rows per product.

    Returns:
        ``(N, k)`` C-contiguous float32 array.
    """
    out = np.empty((embedding.shape[0], projection.shape[0]), dtype=np.float32)
    matrix = projection.T.to(device=embedding.device, dtype=torch.float32)
    for start in range(0, embedding.shape[0], block_rows):
        block = embedding[start : start + block_rows].to(torch.float32)
        out[start : start + block.shape[0]] = (block @ matrix).cpu().numpy()
    return out


class PrunedKCenterGreedy:
    """Greedy k-center (farthest point) selection with triangle-inequality pruning, on one or several processes.

    The same projection (anomalib's very sparse random projection, drawn as :class:`KCenterGreedy` draws it) and the
    same greedy rule as :class:`KCenterGreedy`: start from a random point, then repeatedly add the point farthest
    from all centers chosen so far. Each point remembers its nearest center; a new center ``c`` can only come nearer
    to a point ``p`` of center ``a`` than ``a`` if ``d(a, c) < 2 d(p, a)``, so whole clusters and most points are
    skipped without measuring (:mod:`.coreset_kernels`). On patch features only a small fraction of the distances of
    the plain loop are computed (``measured`` counts them); the selection is the plain loop's (exact arithmetic;
    distances are summed in a fixed vectorised order instead of torch's norm kernel, so an exact tie can break
    differently).

    Several processes: each holds the rows of its own samples (``embedding``) and their positions in the global
    order (``global_index``); every greedy step calls ``exchange`` once with the local farthest point, which returns
    the global one (largest distance, then smallest global index, as ``torch.max`` breaks ties) and its projected
    row. The selection is then the single-process one over the union of the rows.

    Args:
        embedding: ``(n, D)`` float features of this process.
        sampling_ratio: Fraction of all rows (of every process) to select, in ``(0, 1]``.
        seed: Seed of the projection and of the first center (:func:`seeded_rng`, as :class:`KCenterGreedy`);
            ``None`` draws from torch's and NumPy's global generators (single process only).
        progress: Show a progress bar.
        block_rows: Rows per projection product (see :func:`project_blocks`). Defaults to
            :data:`PROJECTION_BLOCK_ROWS`.
        global_index: ``(n,)`` positions of the local rows in the global order (default ``arange(n)``); ties and
            the first center refer to it.
        n_total: Number of rows over all processes (default ``n``).
        exchange: See above; ``None`` for a single process.

    Example:
        >>> import torch
        >>> embedding = torch.randn(2000, 128)
        >>> idxs = PrunedKCenterGreedy(embedding, 0.01, seed=0).select_coreset_idxs()
        >>> idxs == KCenterGreedy(embedding, 0.01, seed=0).select_coreset_idxs()
        True
    """

    def __init__(
        self,
        embedding: torch.Tensor,
        sampling_ratio: float,
        *,
        seed: int | None = None,
        progress: bool = False,
        block_rows: int | None = None,
        global_index: np.ndarray | None = None,
        n_total: int | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        n_local = embedding.shape[0] if isinstance(embedding, torch.Tensor) and embedding.ndim == 2 else 0
        self.n_total = n_local if n_total is None else int(n_total)
        if exchange is None:
            self.coreset_size = _validate(embedding, sampling_ratio)
        else:
            if seed is None:
                msg = "A distributed coreset needs a seed shared by every process (seed=None draws per process)."
                raise ValueError(msg)
            self.coreset_size = int(self.n_total * float(sampling_ratio))
        if block_rows is not None and block_rows < 1:
            msg = f"`block_rows` must be a positive number of rows, got {block_rows!r}."
            raise ValueError(msg)
        self.embedding = embedding
        self.seed = seed
        self.progress = progress
        self.block_rows = block_rows or PROJECTION_BLOCK_ROWS
        self.global_index = (
            np.arange(n_local, dtype=np.int64) if global_index is None else np.ascontiguousarray(global_index, np.int64)
        )
        if self.global_index.shape != (n_local,):
            msg = f"`global_index` must hold one position per row ({n_local}), got shape {self.global_index.shape}."
            raise ValueError(msg)
        self.exchange = exchange
        self.projection: torch.Tensor | None = None
        self.features: np.ndarray | None = None
        self.min_distances: np.ndarray | None = None
        self.measured = 0

    def _draw(self) -> tuple[torch.Tensor, int]:
        """Draw the projection matrix and the first center's global index (the random calls of KCenterGreedy)."""
        with seeded_rng(self.seed):
            matrix = sparse_random_projection_matrix(self.n_total, self.embedding.shape[1])
            first = int(torch.randint(high=self.n_total, size=(1,)).item())
        return matrix, first

    def _exchange(self, value: float, row: int, features: np.ndarray) -> tuple[int, np.ndarray]:
        """The global farthest point from the local candidate ``row`` (-1: none)."""
        vector = features[row] if row >= 0 else np.zeros(features.shape[1], dtype=np.float32)
        index = int(self.global_index[row]) if row >= 0 else -1
        if self.exchange is None:
            return index, vector
        return self.exchange(value, index, vector)

    def select_coreset_idxs(self) -> list[int]:
        """Greedily select the coreset.

        Returns:
            ``coreset_size`` global row indices in selection order.
        """
        self.projection, first = self._draw()
        features = project_blocks(self.embedding, self.projection, self.block_rows)
        self.features = features
        n, k = features.shape
        m = self.coreset_size
        min_distances = np.full(n, np.inf, dtype=np.float32)
        nearest = np.empty(n, dtype=np.int32)
        link = np.empty(n, dtype=np.int64)
        head = np.full(m, -1, dtype=np.int64)
        radius = np.full(m, -np.inf, dtype=np.float32)
        farthest = np.full(m, -1, dtype=np.int64)
        centers = np.empty((m, k), dtype=np.float32)
        center_distances = np.empty(m, dtype=np.float32)
        picks: list[int] = []
        self.min_distances = min_distances
        self.measured = 0
        with tqdm(
            total=m, desc="Selecting coreset", unit="pts", disable=not self.progress, dynamic_ncols=True, leave=True
        ) as bar:
            for step in range(m):
                if step == 0:
                    hits = np.flatnonzero(self.global_index == first)
                    row = int(hits[0]) if hits.size else -1
                    value = math.inf
                else:
                    row = _farthest(radius, farthest, step, self.global_index)
                    value = float(min_distances[row]) if row >= 0 else -math.inf
                index, centers[step] = self._exchange(value, row, features)
                picks.append(index)
                if step == 0:
                    _first_center(
                        features, centers[0], min_distances, nearest, head, link, radius, farthest, self.global_index
                    )
                    self.measured += n
                else:
                    _center_distances(centers, step, centers[step], center_distances)
                    self.measured += _add_center(
                        features,
                        centers[step],
                        step,
                        center_distances,
                        min_distances,
                        nearest,
                        head,
                        link,
                        radius,
                        farthest,
                        self.global_index,
                    )
                bar.update(1)
        return picks

    def sample_coreset(self) -> torch.Tensor:
        """Select the coreset and return its rows, in selection order (single process).

        Returns:
            ``(coreset_size, D)`` rows of ``embedding``.
        """
        idxs = np.asarray(self.select_coreset_idxs(), dtype=np.int64)
        row_of = np.empty(self.n_total, dtype=np.int64)
        row_of[self.global_index] = np.arange(self.global_index.shape[0], dtype=np.int64)
        rows = torch.from_numpy(row_of[idxs]).to(self.embedding.device)
        return self.embedding[rows]
