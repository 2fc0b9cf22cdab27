"""A generated image folder: shapes with random colour, texture, size, position and noise.

One sub-folder per class (torchvision's ImageFolder layout), PNG files, RGB. Every image is drawn
from a seed of its own, so a folder is the same on every machine. The shapes overlap in outline
(a square and a diamond differ by a rotation the others also get), the background is a random
gradient with stripes, and pixel noise and a distractor blob are added, so a small network does
not reach 100 %.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar")


def _polygon(center: tuple[float, float], radius: float, corners: int, turn: float,
             inner: float | None = None) -> list[tuple[float, float]]:
    """A regular polygon (or, with `inner`, a star of that inner radius) around `center`."""
    points = []
    steps = corners * (2 if inner else 1)
    for step in range(steps):
        angle = turn + 2 * math.pi * step / steps
        length = radius if inner is None or step % 2 == 0 else radius * inner
        points.append((center[0] + length * math.cos(angle), center[1] + length * math.sin(angle)))
    return points


def draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 size x size x 3 image of `shape`."""
    from PIL import Image, ImageDraw

    # background: a gradient between two random colours, with faint stripes
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[None, :, None]
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) / rng.uniform(1, 4))
    background = low + (high - low) * (0.7 * ramp + 0.3 * stripes[..., None])
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    colour = tuple(int(value) for value in rng.integers(0, 256, 3))
    radius = rng.uniform(0.2, 0.38) * size
    center = tuple(rng.uniform(radius, size - radius, 2))
    turn = rng.uniform(-0.35, 0.35)
    box = [center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius]
    width = max(1, int(radius / 3))
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "ring":
        pen.ellipse(box, outline=colour, width=width)
    elif shape == "square":
        pen.polygon(_polygon(center, radius * 1.3, 4, math.pi / 4 + turn), fill=colour)
    elif shape == "diamond":
        pen.polygon(_polygon(center, radius * 1.2, 4, turn), fill=colour)
    elif shape == "triangle":
        pen.polygon(_polygon(center, radius * 1.2, 3, -math.pi / 2 + turn), fill=colour)
    elif shape == "star":
        pen.polygon(_polygon(center, radius * 1.2, 5, -math.pi / 2 + turn, inner=0.45), fill=colour)
    elif shape == "cross":
        for across in (turn, turn + math.pi / 2):
            dx, dy = radius * math.cos(across), radius * math.sin(across)
            pen.line([center[0] - dx, center[1] - dy, center[0] + dx, center[1] + dy],
                     fill=colour, width=width)
    elif shape == "bar":
        dx, dy = radius * math.cos(turn), radius * math.sin(turn)
        pen.line([center[0] - dx, center[1] - dy, center[0] + dx, center[1] + dy], fill=colour,
                 width=max(2, int(radius / 1.6)))
    else:
        raise ValueError(f"unknown shape {shape!r}; the shapes are {SHAPES}")
    # a distractor: a small blob of another colour somewhere
    spot = rng.uniform(0, size, 2)
    blob = rng.uniform(1, size / 10)
    pen.ellipse([spot[0] - blob, spot[1] - blob, spot[0] + blob, spot[1] + blob],
                fill=tuple(int(value) for value in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(4, 28), (size, size, 3))
    return noisy.clip(0, 255).astype(np.uint8)


def write_folder(folder: Path, per_class: int, size: int = 32, classes: int = len(SHAPES),
                 seed: int = 0) -> Path:
    """`folder/<shape>/<i>.png`: `per_class` images of each of the first `classes` shapes."""
    from PIL import Image

    for index, shape in enumerate(SHAPES[:classes]):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            rng = np.random.default_rng([seed, index, number])
            Image.fromarray(draw(shape, size, rng)).save(folder / shape / f"{number:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=len(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_folder(args.folder, args.per_class, args.size, args.classes, args.seed)


if __name__ == "__main__":
    main()
