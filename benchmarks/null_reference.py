"""What a perfect generator scores: the voxel set metrics of real shapes against real shapes.

1-NNA, COV, MMD and JSD compare a generated set with a real one, and their values depend on the two
sizes as much as on the generator: two sets drawn from one distribution score 1-NNA near, not at, 0.5,
and COV well below 1. This script measures those metrics with a *real* set in the generator's place,
at the sizes the reported figures were measured at, so that the figures can be read against it:

* ``voxel``: ``python -m benchmarks.generation --task voxel`` (32^3, 2,000 procedural shapes, 200 held
  out) judged 120 generated shapes (20 per class) against the 200 held-out ones;
* ``voxel_quick``: ``scripts/demo.sh`` (the ``voxel_quick`` preset, 16^3, 100 held out) measures its 16
  samples against 16 held-out shapes;
* ``voxel_latent_quick``: ``mmldm ablate voxel_latent --quick`` (16^3, 600 shapes, 60 held out) judged
  60 samples against the 60 held-out shapes.

A size pair ``GxR`` draws ``R`` held-out shapes as the real set (all of them when ``R`` is the held-out
count, as in the benchmark) and ``G`` other shapes in the generator's place: held-out shapes disjoint from
the real set when enough remain, else training shapes (drawn from the same distribution, by the same
procedural generator). ``--repeats`` draws give the mean and sd.

The metrics are those of ``mmldm_voxel.metrics.generation_metrics`` (1,024 surface points per shape,
Chamfer distances), assembled from one Chamfer matrix per task that is filled lazily and reused across
draws and size pairs; a shape's surface points are seeded by its index in its split (the modality seeds
them by position in the set: the same distribution of points).

Results: ``benchmarks/results/null_reference/results.{json,md}`` (a run updates the tasks it measured).

Examples::

    python -m benchmarks.null_reference                                   # every task's reported sizes
    python -m benchmarks.null_reference --task voxel --sizes 120x200 100x100 --repeats 5
    python -m benchmarks.null_reference --task voxel_quick --sizes 16x16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "null_reference"

#: Config overrides of each task's data, and the size pairs (generated x real) its figures were measured at.
TASKS: dict[str, tuple[list[str], list[str]]] = {
    "voxel": (["modality=voxel"], ["120x200", "100x100"]),
    "voxel_quick": (["modality=voxel", "preset=voxel_quick"], ["16x16"]),
    "voxel_latent_quick": (["modality=voxel", "preset=voxel_quick", "modality.num_shapes=600"], ["60x60"]),
}


class ShapePool:
    """The held-out and training shapes of a voxel modality, their surface points and a lazily filled
    Chamfer matrix over them (each pair computed once, by the formula of ``metrics.chamfer_matrix``)."""

    def __init__(self, modality: Any, points: int = 1024) -> None:
        self.modality, self.points = modality, points
        self.splits = {s: modality.dataset(s) for s in ("val", "train")}
        self.ids = [(s, i) for s in ("val", "train") for i in range(len(self.splits[s]))]  # pool index -> item
        n = len(self.ids)
        self.d = np.full((n, n), np.nan)
        self._grids: dict[int, np.ndarray] = {}
        self._trees: dict[int, Any] = {}

    def held_out(self) -> np.ndarray:
        """Pool indices of the held-out shapes."""
        return np.arange(len(self.splits["val"]))

    def training(self) -> np.ndarray:
        """Pool indices of the training shapes."""
        return np.arange(len(self.splits["val"]), len(self.ids))

    def grid(self, k: int) -> np.ndarray:
        """Boolean occupancy ``[R, R, R]`` of pool item ``k``."""
        if k not in self._grids:
            split, i = self.ids[k]
            self._grids[k] = self.modality.occupancy(self.splits[split][i]["x"][None])[0]
        return self._grids[k]

    def _tree(self, k: int) -> Any:
        from scipy.spatial import cKDTree

        from mmldm_voxel.metrics import surface_points

        if k not in self._trees:
            pts = surface_points(self.grid(k), self.points, seed=self.ids[k][1])
            self._trees[k] = cKDTree(pts) if len(pts) else None
        return self._trees[k]

    def distances(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Chamfer distances ``[len(rows), len(cols)]`` (inf where a shape has no surface)."""
        block = self.d[np.ix_(rows, cols)]
        for a, b in zip(*np.nonzero(np.isnan(block))):
            i, j = rows[a], cols[b]
            if np.isnan(self.d[i, j]):
                ti, tj = self._tree(i), self._tree(j)
                value = np.inf if ti is None or tj is None else (
                    np.mean(tj.query(ti.data)[0] ** 2) + np.mean(ti.query(tj.data)[0] ** 2))
                self.d[i, j] = self.d[j, i] = value
            block[a, b] = self.d[i, j]
        return block

    def set_metrics(self, real: np.ndarray, generated: np.ndarray) -> dict[str, float]:
        """``generation_metrics`` of pool items ``real`` against pool items ``generated``."""
        grids = np.stack([self.grid(k) for k in (*real, *generated)])
        return set_metrics_from_distances(self.distances(real, real), self.distances(generated, generated),
                                          self.distances(real, generated), grids[:len(real)], grids[len(real):])


def set_metrics_from_distances(d_rr: np.ndarray, d_gg: np.ndarray, d_rg: np.ndarray, real: np.ndarray,
                               generated: np.ndarray) -> dict[str, float]:
    """MMD-CD, COV-CD, 1-NNA-CD and JSD from Chamfer matrices and the boolean grids, assembled as
    ``mmldm_voxel.metrics.generation_metrics`` assembles them."""
    from mmldm_voxel.metrics import mmd_cov, occupancy_jsd, one_nna

    mmd, cov = mmd_cov(d_rg)
    return {"mmd_cd": mmd, "cov_cd": cov, "1nna_cd": one_nna(d_rr, d_gg, d_rg), "jsd": occupancy_jsd(real, generated)}


def draw(pool: ShapePool, generated: int, real: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One draw of ``real`` held-out shapes and ``generated`` others in the generator's place; says where
    the others came from."""
    held = pool.held_out()
    if real > len(held):
        raise ValueError(f"a real set of {real} needs {real} held-out shapes; this data holds {len(held)}")
    order = rng.permutation(held)
    real_set, rest = order[:real], order[real:]
    if len(rest) >= generated:
        return real_set, rest[:generated], "held-out, disjoint from the real set"
    return real_set, rng.choice(pool.training(), size=generated, replace=False), "training split"


def measure_pair(pool: ShapePool, generated: int, real: int, repeats: int, seed: int) -> dict[str, Any]:
    """``repeats`` draws of one size pair: per metric mean, sd and values (:func:`mmldm.evaluation.stats.summarize`)."""
    from mmldm.evaluation.stats import summarize

    rng = np.random.default_rng(seed)
    start, values, sources = time.process_time(), [], set()
    for _ in range(repeats):
        r, g, source = draw(pool, generated, real, rng)
        values.append(pool.set_metrics(r, g))
        sources.add(source)
    held = len(pool.held_out())
    return {"generated": generated, "real": real, "repeats": repeats, "seed": seed,
            "real_source": "all held-out shapes" if real == held else f"random {real} of {held} held-out shapes",
            "generated_source": ", ".join(sorted(sources)), "metrics": summarize(values),
            "cpu_seconds": round(time.process_time() - start, 1)}


def run_task(name: str, sizes: Sequence[str], repeats: int, seed: int, points: int) -> dict[str, Any]:
    """Every size pair of one task on one pool."""
    from mmldm.build import build_modality
    from mmldm.configuration import compose

    overrides = TASKS[name][0]
    pool = ShapePool(build_modality(compose(overrides).modality), points)
    pairs = {}
    for size in sizes:
        g, r = parse_size(size)
        pairs[size] = measure_pair(pool, g, r, repeats, seed)
        m = pairs[size]["metrics"]
        print(f"{name} {size}: " + ", ".join(f"{k} {v['mean']:.4g} ± {v['sd']:.2g}" for k, v in m.items()), flush=True)
    return {"overrides": overrides, "held_out": len(pool.held_out()), "train": len(pool.training()),
            "resolution": int(pool.modality.cfg.resolution), "points": points, "pairs": pairs}


def parse_size(text: str) -> tuple[int, int]:
    """``"120x200"`` -> ``(120 generated, 200 real)``."""
    try:
        g, r = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected GENERATEDxREAL, e.g. 120x200") from None
    if g < 1 or r < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sets need >= 1 shape")
    return g, r


def report(results: dict[str, Any]) -> str:
    """``results.md``: one table per task, mean ± sd over the draws."""
    from mmldm.evaluation.stats import format_mean_sd

    lines = ["# Null reference: voxel set metrics of real shapes against real shapes", "",
             "What a perfect generator scores at the sizes the reported figures were measured at: real shapes in "
             "the generator's place (`python -m benchmarks.null_reference`). A generated set's 1-NNA, COV, MMD "
             "and JSD are read against these values, not against the ideal 0.5 / 1 / 0 / 0.", ""]
    for name, task in results["tasks"].items():
        keys = sorted({k for p in task["pairs"].values() for k in p["metrics"]})
        lines += [f"## {name}", "", f"`{' '.join(task['overrides'])}`: {task['resolution']}^3 grids, "
                  f"{task['held_out']} held-out and {task['train']} training shapes, {task['points']} surface points "
                  "per shape.", "",
                  "| generated x real | " + " | ".join(keys) + " | draws | real set | in the generator's place |",
                  "| --- " * (len(keys) + 4) + "|"]
        for size, p in task["pairs"].items():
            cells = [format_mean_sd(p["metrics"].get(k)) for k in keys]
            lines.append(f"| {size} | " + " | ".join([*cells, str(p["repeats"]), p["real_source"], p["generated_source"]])
                         + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.null_reference", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="tasks and their default sizes:\n" + "\n".join(
                                    f"  {k:<20} {' '.join(v[1])}" for k, v in TASKS.items()))
    p.add_argument("--task", choices=sorted(TASKS), help="one task (default: every task at its sizes)")
    p.add_argument("--sizes", nargs="+", help="size pairs GENERATEDxREAL (default: the task's)")
    p.add_argument("--repeats", type=int, default=5, help="draws per size pair (default 5)")
    p.add_argument("--points", type=int, default=1024, help="surface points per shape (default 1024, as the metrics)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT, help="report folder (default benchmarks/results/null_reference)")
    args = p.parse_args(argv)
    for size in args.sizes or []:
        try:
            parse_size(size)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if args.sizes and not args.task:
        p.error("--sizes needs --task")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = [args.task] if args.task else list(TASKS)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"tasks": {}}
    for name in names:
        task = run_task(name, args.sizes or TASKS[name][1], args.repeats, args.seed, args.points)
        earlier = results["tasks"].get(name, {})
        if {k: earlier.get(k) for k in ("overrides", "points")} == {k: task[k] for k in ("overrides", "points")}:
            task["pairs"] = {**earlier["pairs"], **task["pairs"]}  # keep the sizes this run did not measure
        results["tasks"][name] = task
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))
    text = report(results)
    (args.out / "results.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
