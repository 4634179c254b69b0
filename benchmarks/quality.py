"""Retrieval quality on real product photos, plain vs robust query embedding.

    python benchmarks/quality.py [--model timm:efficientnet_lite0] [--size 448]

Catalog: 2,000 Fashion-MNIST train photos (Zalando, MIT; ``apt-get install dataset-fashion-mnist``).
- Category precision@10: 500 held-out t10k photos as queries.
- Near-duplicate recall@1: 200 catalog photos, each under nine photo faults
  (prodvec/evaluate/perturb.py), must find their own product first among the 2,000.
Search runs in memory: exact cosine distances over a numpy matrix of the same vectors the
worker would store (no index, no half precision), so the numbers measure the embeddings alone.
Photos are rendered at ``--size`` px, larger than the encoder's input as real photos are, with
the same upscaling for catalog and queries. Writes benchmarks/quality.md and quality.png;
embeddings are cached in benchmarks/results/ (git-ignored), keyed by everything they depend on.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from benchmarks.fashion_mnist import CATEGORIES, load, to_photo
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from fashion_mnist import CATEGORIES, load, to_photo

from prodvec.evaluate import perturb as faults
from prodvec.worker.encode import Encoder, WeightSource, load_encoder, parse_spec
from prodvec.worker.encode import robust

HERE = Path(__file__).resolve().parent
SEED = 20171025
#: The issue's targets for the offline encoder.
TARGET_PRECISION, TARGET_AVERAGE, TARGET_EACH = 0.70, 0.95, 0.85
#: Ablation rows: which robust views each one searches (indices into robust.VIEW_NAMES).
VIEW_SETS: dict[str, tuple[int, ...]] = {
    "photo only (plain)": (0,),
    "photo + turned ±": (0, 1, 2),
    "photo + coarse": (0, 3),
    "all views (robust)": (0, 1, 2, 3),
}


@dataclass(frozen=True)
class Setup:
    model: str
    size: int
    catalog: int
    queries: int
    near_dup: int
    cache: Path


@dataclass(frozen=True)
class Scores:
    precision: float  # category precision@10 of the held-out queries
    recall: dict[str, float]  # near-duplicate recall@1 per fault ("clean": unperturbed)

    @property
    def faults(self) -> dict[str, float]:
        return {name: value for name, value in self.recall.items() if name != "clean"}

    @property
    def average(self) -> float:
        return float(np.mean(list(self.faults.values())))

    @property
    def worst(self) -> float:
        return min(self.faults.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="timm:efficientnet_lite0")
    parser.add_argument("--size", type=int, default=448, help="photo size in px (default 448)")
    parser.add_argument("--catalog", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--near-dup", type=int, default=200)
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--cache", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE / "quality.md")
    args = parser.parse_args(argv)
    if parse_spec(args.model).source is WeightSource.RANDOM:
        parser.error("random weights give meaningless quality numbers: choose a model with real weights")
    setup = Setup(args.model, args.size, args.catalog, args.queries, args.near_dup, args.cache)
    setup.cache.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    encoder = load_encoder(setup.model, args.device)
    bench = Bench(setup, encoder)
    rows = {name: bench.scores(views) for name, views in VIEW_SETS.items()}
    multi_view = bench.scores((0, 1, 2, 3), catalog_views=True)
    report = render(setup, encoder, rows, multi_view, time.perf_counter() - started)
    args.out.write_text(report)
    chart(rows["photo only (plain)"], rows["all views (robust)"], args.out.with_suffix(".png"), setup)
    print(report)
    return 0


class Bench:
    """The photos, their (cached) embeddings, and the scores of a choice of query views."""

    def __init__(self, setup: Setup, encoder: Encoder) -> None:
        self.setup, self.encoder = setup, encoder
        train, self.train_labels = load("train")
        test, self.test_labels = load("t10k")
        rng = np.random.default_rng(SEED)
        self.catalog_ids = rng.choice(len(train), setup.catalog, replace=False)
        self.query_ids = rng.choice(len(test), setup.queries, replace=False)
        # Near-duplicates: evenly spread catalog positions, so every category is in.
        self.dup_positions = np.linspace(0, setup.catalog - 1, setup.near_dup).round().astype(int)
        self.catalog_photos = [to_photo(train[i], setup.size) for i in self.catalog_ids]
        self.query_photos = [to_photo(test[i], setup.size) for i in self.query_ids]
        # Depends on the fault and view definitions too: a change there re-embeds.
        code = inspect.getsource(faults) + inspect.getsource(robust)
        self.key = hashlib.sha256(
            f"{encoder.spec}|{setup.size}|{setup.catalog}|{setup.queries}|{setup.near_dup}|{SEED}|{code}".encode()
        ).hexdigest()[:12]

    def scores(self, views: tuple[int, ...], *, catalog_views: bool = False) -> Scores:
        catalog = self._catalog(catalog_views)
        held = self._queries("held-out", lambda: self.query_photos)[:, views]
        order = np.argsort(robust.fused_distances(held, catalog), axis=1, kind="stable")[:, :10]
        same = self.train_labels[self.catalog_ids][order] == self.test_labels[self.query_ids][:, None]
        recall = {}
        for name in ("clean", *faults.PERTURBATIONS):
            vectors = self._queries(name, lambda name=name: self._near_dup_photos(name))[:, views]
            nearest = robust.fused_distances(vectors, catalog).argmin(axis=1)
            recall[name] = float(np.mean(nearest == self.dup_positions))
        return Scores(float(same.mean()), recall)

    def _near_dup_photos(self, fault: str) -> list[Image.Image]:
        photos = [self.catalog_photos[i] for i in self.dup_positions]
        if fault == "clean":
            return photos
        return [faults.perturb(photo, fault, seed=int(i)) for photo, i in zip(photos, self.dup_positions)]

    def _catalog(self, with_coarse: bool) -> np.ndarray:
        photos = self._cached("catalog", lambda: robust.encode_queries(self.encoder, self.catalog_photos, robust=False))[:, 0]
        if not with_coarse:
            return photos
        coarse = self._cached(
            "catalog-coarse",
            lambda: robust.encode_queries(
                self.encoder, [robust.coarse_view(p) for p in self.catalog_photos], robust=False
            ),
        )[:, 0]
        both = photos + coarse  # one vector per product: the mean direction of its two views
        return both / np.linalg.norm(both, axis=1, keepdims=True)

    def _queries(self, name: str, photos: Callable[[], list[Image.Image]]) -> np.ndarray:
        return self._cached(name, lambda: robust.encode_queries(self.encoder, photos(), robust=True))

    def _cached(self, name: str, embed: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.setup.cache / f"quality-{self.key}-{name}.npy"
        if path.exists():
            return np.load(path)
        started = time.perf_counter()
        vectors = embed()
        np.save(path, vectors)
        print(f"embedded {name}: {vectors.shape[0]}×{vectors.shape[1]} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
        return vectors


def render(setup: Setup, encoder: Encoder, rows: dict[str, Scores], multi_view: Scores, seconds: float) -> str:
    plain, best = rows["photo only (plain)"], rows["all views (robust)"]
    lines = [
        "# Retrieval quality on real product photos",
        "",
        f"Encoder `{encoder.spec}` ({encoder.dimensions}-d). Catalog: {setup.catalog:,} Fashion-MNIST train "
        f"photos; {setup.queries} held-out t10k photos for category precision@10; {setup.near_dup} catalog "
        f"photos under each fault for near-duplicate recall@1 (does the faulty photo find its own product "
        f"first among the {setup.catalog:,}?). Photos rendered at {setup.size} px (dark product on white, "
        f"upscaled from 28 px). Search in memory: exact cosine over the full-precision vectors, so these "
        f"numbers measure the embeddings, not the index.",
        "",
        f"Reproduce: `python benchmarks/quality.py --model {setup.model} --size {setup.size}` "
        f"(this run: {seconds / 60:.0f} min on this machine, embeddings cached).",
        "",
        "## Plain vs robust query embedding",
        "",
        "| fault | plain | robust | change |",
        "|---|---:|---:|---:|",
    ]
    for name in plain.recall:
        lines.append(f"| {name} | {plain.recall[name]:.3f} | {best.recall[name]:.3f} | "
                     f"{best.recall[name] - plain.recall[name]:+.3f} |")
    lines += [
        f"| **average of the {len(plain.faults)} faults** | **{plain.average:.3f}** | **{best.average:.3f}** | "
        f"{best.average - plain.average:+.3f} |",
        f"| worst fault | {plain.worst:.3f} | {best.worst:.3f} | {best.worst - plain.worst:+.3f} |",
        f"| **category precision@10** (held-out, clean) | **{plain.precision:.3f}** | **{best.precision:.3f}** | "
        f"{best.precision - plain.precision:+.3f} |",
        "",
        "Targets: " + "; ".join([
            _target("category precision@10", best.precision, TARGET_PRECISION),
            _target("average recall@1", best.average, TARGET_AVERAGE),
            _target("every fault's recall@1", best.worst, TARGET_EACH),
        ]) + " (robust).",
        "",
        f"Robust: each query is searched as {len(robust.VIEW_NAMES)} views ({', '.join(robust.VIEW_NAMES)}); "
        f"a product keeps its best view's distance, extra views counted {robust.EXTRA_VIEW_PENALTY} further "
        "(prodvec/worker/encode/robust.py).",
        "",
        "## Which views earn their cost",
        "",
        "| query views | searches per query | precision@10 | average recall@1 | worst fault |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {len(VIEW_SETS[name])} | {s.precision:.3f} | {s.average:.3f} | {s.worst:.3f} |"
          for name, s in rows.items()),
        f"| all views + catalog multi-view (not shipped) | 4 | {multi_view.precision:.3f} | "
        f"{multi_view.average:.3f} | {multi_view.worst:.3f} |",
        "",
        "Catalog multi-view: each product stored as the mean of its photo's and its coarse view's vectors. "
        "It would need the worker to embed two views per product, and re-embedding; per fault: "
        + ", ".join(f"{name} {value:.2f}" for name, value in multi_view.faults.items()) + ".",
        "",
        "## The faults",
        "",
        *(f"- **{name}**: {description}" for name, description in faults.DESCRIPTIONS.items()),
        "",
        f"Categories: {', '.join(CATEGORIES)}. Photos: Fashion-MNIST by Zalando Research (MIT licence).",
        "",
    ]
    return "\n".join(lines)


def _target(what: str, value: float, target: float) -> str:
    return f"{what} {value:.3f} {'≥' if value >= target else '<'} {target} {'met' if value >= target else 'NOT met'}"


def chart(plain: Scores, best: Scores, path: Path, setup: Setup) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    names = list(plain.faults) + ["average"]
    before = [*plain.faults.values(), plain.average]
    after = [*best.faults.values(), best.average]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    ax.bar(x - 0.2, before, 0.4, label="plain", color="#9aa5b1")
    ax.bar(x + 0.2, after, 0.4, label="robust query views", color="#2f6fb0")
    ax.axhline(TARGET_EACH, color="#c0392b", linestyle=":", linewidth=1, label=f"target per fault {TARGET_EACH}")
    ax.axhline(TARGET_AVERAGE, color="#c0392b", linestyle="--", linewidth=1, label=f"target average {TARGET_AVERAGE}")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("near-duplicate recall@1")
    ax.set_title(f"Finding the product from a faulty photo: {setup.catalog:,} Fashion-MNIST photos, {setup.model}; "
                 f"category precision@10 {plain.precision:.2f} → {best.precision:.2f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
