"""Voxel quality metrics: IoU, Chamfer distance and the set metrics MMD/COV/1-NNA.

Grids enter as boolean occupancy ``[B, R, R, R]``. Point sets are sampled
uniformly (area-weighted) on the marching-cubes surface of each grid, in
unit-cube coordinates. The Chamfer distance is the symmetric sum of mean
squared nearest-neighbour distances (Fan et al. 2017; as used by Achlioptas
et al. 2018, arXiv 1707.02392, and Yang et al. 2019, PointFlow, arXiv 1906.12320).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .output import surface_mesh


def iou(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Intersection over union per sample of boolean grids ``[B, *s]`` -> ``[B]``;
    1 when both grids are empty."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    inter = np.logical_and(x, y).sum(axis=1)
    union = np.logical_or(x, y).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def surface_points(occupancy: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points ``[n, 3]`` sampled uniformly on the surface of a boolean grid
    (``[0, 3]`` when the grid has no surface)."""
    vertices, faces = surface_mesh(occupancy.astype(np.float32), level=0.5, outside=0.0)
    if len(faces) == 0:
        return np.zeros((0, 3), np.float32)
    tris = vertices[faces]  # (F, 3 corners, 3)
    area = np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1  # reflect into the triangle for uniform barycentric coordinates
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tris[pick]
    return (t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])).astype(np.float32)


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance of point sets ``a [N, 3]`` and ``b [M, 3]``:
    ``mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2``; NaN if a set is empty."""
    d = chamfer_matrix([a], [b])[0, 0]
    return float(d) if np.isfinite(d) else float("nan")


def chamfer_matrix(rows: list[np.ndarray], cols: list[np.ndarray]) -> np.ndarray:
    """Chamfer distances between every pair: ``[len(rows), len(cols)]`` (inf when a set is empty).
    Builds each k-d tree once."""
    trees_r = [cKDTree(p) if len(p) else None for p in rows]
    trees_c = [cKDTree(p) if len(p) else None for p in cols]
    out = np.full((len(rows), len(cols)), np.inf)
    for i, (a, ta) in enumerate(zip(rows, trees_r)):
        for j, (b, tb) in enumerate(zip(cols, trees_c)):
            if ta is not None and tb is not None:
                out[i, j] = np.mean(tb.query(a)[0] ** 2) + np.mean(ta.query(b)[0] ** 2)
    return out


def mmd_cov(d_real_gen: np.ndarray) -> tuple[float, float]:
    """Minimum matching distance and coverage (Achlioptas et al. 2018) from
    distances ``[R, G]`` between real and generated sets."""
    mmd = float(np.mean(d_real_gen.min(axis=1)))
    cov = len(np.unique(d_real_gen.argmin(axis=0))) / d_real_gen.shape[0]
    return mmd, float(cov)


def one_nna(d_rr: np.ndarray, d_gg: np.ndarray, d_rg: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy on real vs generated (Lopez-Paz &
    Oquab 2017; PointFlow): 0.5 when the sets are indistinguishable, 1 when apart."""
    n_r = len(d_rr)
    full = np.block([[d_rr, d_rg], [d_rg.T, d_gg]]).astype(np.float64)
    np.fill_diagonal(full, np.inf)
    is_real = np.arange(len(full)) < n_r
    return float(np.mean(is_real[full.argmin(axis=1)] == is_real))


def occupancy_jsd(real: np.ndarray, generated: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) between the mean occupancy of two grid sets, each
    normalized to a distribution over cells (Achlioptas et al. 2018's JSD, on the grid itself).

    0 for sets that fill space alike; ln 2 = 0.693 for sets that never share a cell. scipy's
    ``jensenshannon`` returns the distance, its square is the divergence.
    """
    from scipy.spatial.distance import jensenshannon

    p = np.asarray(real, np.float64).reshape(len(real), -1).mean(axis=0)
    q = np.asarray(generated, np.float64).reshape(len(generated), -1).mean(axis=0)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    return float(jensenshannon(p, q) ** 2)


def generation_metrics(real: np.ndarray, generated: np.ndarray, points: int = 1024) -> dict[str, float]:
    """MMD-CD, COV-CD, 1-NNA-CD and occupancy JSD between boolean grid sets ``real [R, *s]``
    and ``generated [G, *s]``."""
    pr = [surface_points(g, points, seed=i) for i, g in enumerate(real)]
    pg = [surface_points(g, points, seed=i) for i, g in enumerate(generated)]
    d_rg = chamfer_matrix(pr, pg)
    mmd, cov = mmd_cov(d_rg)
    nna = one_nna(chamfer_matrix(pr, pr), chamfer_matrix(pg, pg), d_rg)
    return {"mmd_cd": mmd, "cov_cd": cov, "1nna_cd": nna, "jsd": occupancy_jsd(real, generated)}


def reconstruction_metrics(x: np.ndarray, x_rec: np.ndarray, points: int = 2048) -> dict[str, float]:
    """Mean IoU and mean Chamfer distance (over pairs with two surfaces) of boolean grids ``[B, *s]``."""
    pairs = enumerate(zip(x, x_rec))
    cds = [chamfer(surface_points(a, points, i), surface_points(b, points, i)) for i, (a, b) in pairs]
    finite = [c for c in cds if np.isfinite(c)]
    return {
        "iou": float(np.mean(iou(x, x_rec))),
        "chamfer": float(np.mean(finite)) if finite else float("nan"),
    }
