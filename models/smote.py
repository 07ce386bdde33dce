"""SMOTE on uint8 images with memory bounded by the output, not by float copies of the training set.

``imblearn.over_sampling.SMOTE(k_neighbors=k, random_state=seed).fit_resample`` on flattened pixels gives exactly
the rows :func:`smote_resample` returns (after rounding to uint8, as medstack always did), and a test holds the two
equal. What imbalanced-learn would cost at 224x224x3 (150,528 features) is the reason for this module: it wants the
whole training set as floats, copies it, builds every synthetic row through float64 temporaries and stacks
everything again (a dozen-odd GB for a BreakHis fold). Here only the uint8 result is allocated whole; the neighbour
search sees one class at a time as float32 (what scikit-learn's brute-force search needs) and works in blocks of
about :data:`CHUNK_BYTES` a thread, and synthetic rows are made in float64 chunks of that size, then rounded into
the result.

Reused from imbalanced-learn/scikit-learn rather than re-derived: the per-class targets
(``check_sampling_strategy('auto')``: every class up to the majority count), the neighbour search
(``check_neighbors_object``: ``NearestNeighbors(k + 1)``, the row itself dropped) and the random draws, which follow
``BaseSMOTE._make_samples``: a fresh ``RandomState(seed)`` per class, ``randint`` over (row, neighbour) pairs, then
one ``uniform`` step per sample.
"""

from __future__ import annotations

import numpy as np

from medstack.errors import BAD_INPUT, MedstackError

CHUNK_BYTES = 64 * 2**20  # float64 working set of one chunk of synthetic rows


class SmoteError(MedstackError, ValueError):
    """A class of fewer than two samples in the rows SMOTE is given: bad data for this split, not a bug."""

    exit_code, kind = BAD_INPUT, "data error"
    hint = ("a fold's training part holds a single image of a class: add images, lower split.folds, "
            "or leave out the smote strategy")


def smote_resample(x: np.ndarray, y: np.ndarray, k_neighbors: int, seed: int, *,
                   chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """SMOTE on flattened pixels of the training part only; returns (x, y, source_rows, notes).

    The original rows come first, in order, then the synthetic ones class by class. ``k_neighbors`` is lowered (and
    said so) when the smallest class has too few samples; a class of fewer than two samples cannot be oversampled
    and is an error.
    """
    from imblearn.utils import check_sampling_strategy

    if x.dtype != np.uint8 or x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"SMOTE expects uint8 images (N, ...) with one label each, got {x.dtype} {x.shape} "
                         f"and {len(y)} labels")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    notes = []
    if smallest < 2:
        raise SmoteError(f"SMOTE needs at least 2 samples per class, class counts are {counts.tolist()}")
    k = min(k_neighbors, smallest - 1)
    if k < k_neighbors:
        notes.append(f"SMOTE k_neighbors lowered from {k_neighbors} to {k}: smallest class has {smallest} samples")
    wanted = {cls: n for cls, n in check_sampling_strategy("auto", y, "over-sampling").items() if n > 0}

    n_new = sum(wanted.values())
    x_res = np.empty((len(x) + n_new,) + x.shape[1:], dtype=np.uint8)
    x_res[: len(x)] = x
    flat_out = x_res.reshape(len(x_res), -1)
    y_res = np.concatenate([y, *(np.full(n, cls, dtype=y.dtype) for cls, n in wanted.items())])
    flat_in = x.reshape(len(x), -1)
    start = len(x)
    for cls, n in wanted.items():
        _synthesise(flat_in, np.flatnonzero(y == cls), n, k, seed, flat_out[start:start + n], chunk_bytes)
        start += n
    source_rows = np.concatenate([np.arange(len(x)), np.full(n_new, -1)])
    notes.append(f"SMOTE added {n_new} synthetic samples (k_neighbors={k})")
    return x_res, y_res.astype(np.int64), source_rows, notes


def _synthesise(flat: np.ndarray, members: np.ndarray, n: int, k: int, seed: int, out: np.ndarray,
                chunk_bytes: int) -> None:
    """Write ``n`` SMOTE samples of the class whose rows of ``flat`` are ``members`` into ``out`` (uint8 rows)."""
    from imblearn.utils import check_neighbors_object
    from sklearn import config_context

    per_chunk = max(1, chunk_bytes // (flat.shape[1] * 8))
    # The one float copy: this class only, as float32 (what the neighbour search needs), filled chunk by chunk.
    points = np.empty((len(members), flat.shape[1]), dtype=np.float32)
    for lo in range(0, len(members), per_chunk):
        points[lo:lo + per_chunk] = flat[members[lo:lo + per_chunk]]
    # scikit-learn's search upcasts blocks of pairwise_dist_chunk_size rows (default 256) to float64 on each thread:
    # 300 MB a block at 150,528 features. Smaller blocks bound that; integer pixels keep every distance exact in
    # float64 whatever the blocking, so the neighbours do not change.
    search_rows = max(20, min(256, per_chunk))  # scikit-learn's bounds: at least 20, and 256 is its default
    with config_context(pairwise_dist_chunk_size=search_rows):
        search = check_neighbors_object("k_neighbors", k, additional_neighbor=1).fit(points)
        neighbours = search.kneighbors(points, return_distance=False)[:, 1:]
    random_state = np.random.RandomState(seed)  # imbalanced-learn: check_random_state(seed), once per class
    picks = random_state.randint(low=0, high=neighbours.size, size=n)
    steps = random_state.uniform(size=n)[:, np.newaxis]
    rows, cols = np.divmod(picks, neighbours.shape[1])
    for lo in range(0, n, per_chunk):
        part = slice(lo, lo + per_chunk)
        base = points[rows[part]]
        # Same operations and dtypes as imbalanced-learn: float32 difference, float64 step, back to float32.
        new = (base + steps[part] * (points[neighbours[rows[part], cols[part]]] - base)).astype(np.float32)
        out[part] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
