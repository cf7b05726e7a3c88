"""Pictures of what the world model predicts, saved as PNG artifacts for the mlflow UI.

A dream image has one row per kind of frame (the real frames, their reconstructions from the
posterior, and the open-loop prediction of the prior from a few observed frames on) and one
column per time step. MinAtar category maps are drawn with a fixed colour per category.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

CATEGORY_COLOURS = np.array(
    [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / 10, 0.75, 1.0)) for i in range(10)],
    dtype=np.uint8)  # category 0 (empty) is black, 1..10 get evenly spaced hues


def to_rgb(frames: np.ndarray, categorical: bool) -> np.ndarray:
    """Frames `(T, C, H, W)` as the model sees them -> uint8 `(T, H, W, 3)`.

    Categorical frames hold one-hot or logit channels (the argmax is drawn); continuous frames are
    in [-0.5, 0.5] as produced by preprocessing.
    """
    if categorical:
        return CATEGORY_COLOURS[np.clip(frames.argmax(axis=1), 0, len(CATEGORY_COLOURS) - 1)]
    rgb = np.clip((frames + 0.5) * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def dream_strip(rows: list[np.ndarray], categorical: bool, scale: int = 1, gap: int = 2) -> Image.Image:
    """Stack rows of frames `(T, C, H, W)` into one image; `scale` enlarges small frames."""
    drawn = [to_rgb(r, categorical) for r in rows]
    t = min(len(d) for d in drawn)
    h, w = drawn[0].shape[1:3]
    canvas = np.full((len(drawn) * (h + gap) - gap, t * (w + gap) - gap, 3), 64, dtype=np.uint8)
    for i, frames in enumerate(drawn):
        for j in range(t):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = frames[j]
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image
