"""Write held-out phase-object sets — families that are NOT in the training library — as folders
of .npy phase maps (radians, [0, phase_max]) for ``dmicro eval --data FOLDER``.

    python scripts/heldout_sets.py OUT --size 128 --n 32

Families (none of them is drawn by dmicro_hw.data.families):
  natural   photographs from scikit-image's sample data as phase (random crops, rotations)
  letters   text rendered with Pillow's built-in font, random sizes, strokes and levels
  tissue    confluent epithelium: a Voronoi tessellation of cells with walls and nuclei
  lens      smooth wavefronts: random low-order Zernike sums (aberrated plates, lenses)
Each map's peak phase is drawn from [0.2, 1] · phase_max, its minimum is 0.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import ndimage


def natural(rng: np.random.Generator, size: int) -> np.ndarray:
    from skimage import color, data, transform

    names = "camera astronaut coffee chelsea rocket coins moon page text brick grass gravel"
    names = names.split() + ["hubble_deep_field", "immunohistochemistry"]
    img = getattr(data, names[int(rng.integers(len(names)))])()
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    img = img.astype(np.float64)
    scale = rng.uniform(0.5, 1.0) * min(img.shape) / size
    h, w = (int(img.shape[0] / scale), int(img.shape[1] / scale))
    img = transform.resize(img, (max(h, size), max(w, size)), anti_aliasing=True)
    y = int(rng.integers(0, img.shape[0] - size + 1))
    x = int(rng.integers(0, img.shape[1] - size + 1))
    return np.rot90(img[y : y + size, x : x + size], int(rng.integers(4)))


def letters(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("F", (size, size), 0.0)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 8))):
        font = ImageFont.load_default(size=float(rng.uniform(0.08, 0.3) * size))
        chars = list("ABCDEFGHKMNPRSTUVWXYZ0123456789")
        text = "".join(rng.choice(chars, int(rng.integers(1, 5))))
        xy = tuple(rng.uniform(-0.1, 0.8, 2) * size)
        d.text(xy, text, fill=float(rng.uniform(0.3, 1)), font=font)
    return np.asarray(im, dtype=np.float64)


def tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(8, 60))
    pts = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.stack([np.hypot(yy - p[0], xx - p[1]) for p in pts])
    order = np.sort(d, axis=0)
    label = d.argmin(0)
    wall = np.clip(1 - (order[1] - order[0]) / 2.0, 0, 1)  # cell borders
    height = rng.uniform(0.3, 0.7, n)[label]
    dist = ndimage.distance_transform_edt(wall < 0.5)
    body = height * np.clip(dist / rng.uniform(3, 8), 0, 1) ** 0.5
    nuc = np.exp(-(order[0] ** 2) / (2 * (size / math.sqrt(n) / 5) ** 2)) * 0.3
    return body + nuc + 0.2 * wall


def lens(rng: np.random.Generator, size: int) -> np.ndarray:
    c = np.linspace(-1, 1, size)
    y, x = np.meshgrid(c, c, indexing="ij")
    r2 = x * x + y * y
    terms = [x, y, 2 * r2 - 1, x * x - y * y, 2 * x * y, (3 * r2 - 2) * x, (3 * r2 - 2) * y]
    terms += [6 * r2 * r2 - 6 * r2 + 1, x**3 - 3 * x * y * y]
    return sum(rng.normal(0, 1) * t for t in terms)


FAMILIES = {"natural": natural, "letters": letters, "tissue": tissue, "lens": lens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--phase-max", type=float, default=math.pi)
    ap.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args()
    for name, fn in FAMILIES.items():
        rng = np.random.default_rng([a.seed, len(name)])
        maps = []
        for _ in range(a.n):
            phi = fn(rng, a.size)
            phi = phi - phi.min()
            phi = phi / max(phi.max(), 1e-12) * rng.uniform(0.2, 1.0) * a.phase_max
            maps.append(phi.astype(np.float32))
        folder = a.out / name
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", np.stack(maps))
        print(f"{folder}: {a.n} maps of {a.size}²")


if __name__ == "__main__":
    main()
