"""Write the sample catalog that ``prodvec demo`` imports, from real Fashion-MNIST photos.

    python benchmarks/make_demo_catalog.py [--out prodvec/demo/catalog]

Deterministic (fixed seed): 300 train photos (30 per category) with made-up titles, prices and
stock, plus 3 held-out t10k photos as search queries. Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

try:
    from benchmarks.fashion_mnist import CATEGORIES, load, to_photo
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from fashion_mnist import CATEGORIES, load, to_photo

SEED = 20171025
PER_CATEGORY = 30
SIZE = 56  # px; 2x the originals, still tiny on disk
QUERIES = ("sneaker", "bag", "dress")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "prodvec" / "demo" / "catalog"

# category -> (nouns, price range in EUR); adjectives are neutral: the photos are grayscale.
PRODUCTS: dict[str, tuple[tuple[str, ...], tuple[float, float]]] = {
    "tshirt": (("crew-neck T-shirt", "V-neck T-shirt", "cotton tee", "jersey top", "graphic tee"), (9, 35)),
    "trouser": (("chinos", "straight-leg trousers", "jeans", "tailored trousers", "joggers"), (25, 90)),
    "pullover": (("knit pullover", "crew-neck jumper", "cable-knit sweater", "fleece sweatshirt"), (25, 95)),
    "dress": (("midi dress", "shift dress", "wrap dress", "maxi dress", "shirt dress"), (25, 140)),
    "coat": (("wool coat", "parka", "trench coat", "padded jacket", "zip-up jacket"), (60, 250)),
    "sandal": (("strappy sandal", "flat sandal", "heeled sandal", "slide sandal", "espadrille"), (15, 80)),
    "shirt": (("button-down shirt", "oxford shirt", "flannel shirt", "blouse", "poplin shirt"), (20, 70)),
    "sneaker": (("low-top canvas sneaker", "running shoe", "leather sneaker", "slip-on sneaker", "trainer"), (35, 120)),
    "bag": (("tote bag", "shoulder bag", "backpack", "crossbody bag", "clutch", "weekender"), (20, 200)),
    "ankle_boot": (("Chelsea boot", "lace-up ankle boot", "heeled ankle boot", "desert boot", "biker boot"), (50, 180)),
}
ADJECTIVES = ("Classic", "Slim", "Relaxed", "Essential", "Everyday", "Modern", "Soft", "Lightweight",
              "Structured", "Minimal")

ATTRIBUTION = """\
# Attribution

The product photos in `images/` and `queries/` are from **Fashion-MNIST** by Zalando Research:

> Han Xiao, Kashif Rasul, Roland Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking
> Machine Learning Algorithms.* arXiv:1708.07747, 2017. https://github.com/zalandoresearch/fashion-mnist

They were taken from the Debian package `dataset-fashion-mnist`, inverted to dark-on-white and
enlarged from 28x28 to {size}x{size} px by `benchmarks/make_demo_catalog.py`. `images/` holds
training-split photos; `queries/` holds test-split (t10k) photos that are not in the catalog.

The titles, prices and stock levels in `catalog.csv` are made up.

## Licence of the photos

The MIT License (MIT)

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def save_png(pixels: np.ndarray, path: Path) -> None:
    # The photos are grayscale: store them as 8-bit "L" PNGs (a third of RGB's size).
    to_photo(pixels, size=SIZE).convert("L").save(path, format="PNG", optimize=True)


def make_title(rng: np.random.Generator, category: str) -> str:
    nouns, _ = PRODUCTS[category]
    return f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)}"


def build(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    images, labels = load("train")

    # 30 photos per category, then one shuffle so the catalog is not sorted by category.
    picks = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), PER_CATEGORY, replace=False) for c in range(len(CATEGORIES))
    ])
    rng.shuffle(picks)

    for sub in ("images", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)

    with open(out / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["sku", "title", "category", "price", "stock", "image"])
        for n, idx in enumerate(picks, start=1):
            category = CATEGORIES[labels[idx]]
            sku = f"FM-{n:05d}"
            low, high = PRODUCTS[category][1]
            price = round(float(rng.uniform(low, high))) - 0.01  # e.g. 49.99
            stock = 0 if rng.random() < 0.2 else int(rng.integers(1, 41))
            image = f"images/{sku}.png"
            save_png(images[idx], out / image)
            writer.writerow([sku, make_title(rng, category), category, f"{price:.2f}", stock, image])

    # Held-out queries from the test split: never in the catalog.
    test_images, test_labels = load("t10k")
    for name in QUERIES:
        idx = rng.choice(np.flatnonzero(test_labels == CATEGORIES.index(name)))
        save_png(test_images[idx], out / "queries" / f"{name}.png")

    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(size=SIZE), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="catalog folder (default: %(default)s)")
    args = parser.parse_args()
    build(args.out)
    print(f"wrote {len(list((args.out / 'images').glob('*.png')))} images, "
          f"{len(list((args.out / 'queries').glob('*.png')))} queries and catalog.csv to {args.out}")


if __name__ == "__main__":
    main()
