"""Pictures of what the world model predicts, saved as artifacts of the learner's run for the mlflow UI.

Every `logbatch_interval` learner steps, for the first two sequences of the batch:
- `dreams/dream_<step>.gif`: one frame per time step t; per sequence three panels side by side:
  the real frame, its reconstruction from the posterior, and the open-loop dream (observed for
  the first `context` steps, then imagined from the prior alone: its border turns orange), with
  a legend of the categories of the MinAtar games shown;
- `dreams/dream_<step>.png`: the same frames as a strip, one labelled row per kind and sequence,
  one column per time step.

MinAtar category maps are drawn with a fixed colour per category; what a category is depends on
the game (category k = 1 + channel k-1 of the game's MinAtar state, whose names minatar gives).
The evaluation video (`pydreamer.evaluation`) uses the same drawing.
"""
from __future__ import annotations

import colorsys
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

from pydreamer.atomic import atomic_write

CATEGORY_COLOURS = np.array(
    [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / 10, 0.75, 1.0)) for i in range(10)],
    dtype=np.uint8)  # category 0 (empty) is black, 1..10 get evenly spaced hues
BACKGROUND = (64, 64, 64)
TEXT = (255, 255, 255)
OBSERVED = (150, 150, 150)  # border of a dream panel while the model still sees the frames
IMAGINED = (255, 140, 0)    # ... and once it only imagines
PANELS = ('real', 'posterior', 'dream')
GAP, BORDER, MARGIN, LINE = 6, 2, 6, 16
DREAM_SEQUENCES = 2


@functools.cache
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=12)  # Pillow's built-in font: nothing to install or download


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, fill=TEXT) -> None:
    draw.fontmode = '1'  # no anti-aliasing: a GIF palette keeps every frame colour exact
    draw.text(xy, text, fill=fill, font=_font())


@functools.cache
def _text_width(text: str) -> int:
    # measured as drawn: unhinted lengths (font.getlength) are ~7% short without anti-aliasing
    image = Image.new('1', (16 * len(text) + 16, LINE))
    _text(ImageDraw.Draw(image), (0, 0), text, fill=1)
    box = image.getbbox()
    return box[2] if box else 0


def scale_for(size: int) -> int:
    """Enlargement of a size×size frame: 10× for MinAtar's 10×10, 3× for Atari's 64×64 (2..10)."""
    return int(np.clip(200 // size, 2, 10))


@functools.cache
def category_names(env_id: str) -> tuple[str, ...]:
    """Names of categories 1, 2, ... of a MinAtar env id's category map (the game's channel names,
    from minatar); () for other ids."""
    match = re.fullmatch(r'MinAtar/(\w+)-v\d+', env_id or '')
    if not match:
        return ()
    import importlib

    from pydreamer.lean_imports import hidden_modules
    module = re.sub(r'(?<=[a-z])(?=[A-Z])', '_', match[1]).lower()  # SpaceInvaders -> space_invaders
    with hidden_modules('matplotlib', 'seaborn'):  # minatar's renderer, never used here
        game = importlib.import_module(f'minatar.environments.{module}').Env()
    return tuple(sorted(game.channels, key=game.channels.get))


def to_rgb(frames: np.ndarray, categorical: bool) -> np.ndarray:
    """Frames `(T, C, H, W)` as the model sees them -> uint8 `(T, H, W, 3)`.

    Categorical frames hold one-hot or logit channels (the argmax is drawn); continuous frames are
    in [-0.5, 0.5] as produced by preprocessing.
    """
    if categorical:
        return CATEGORY_COLOURS[np.clip(frames.argmax(axis=1), 0, len(CATEGORY_COLOURS) - 1)]
    rgb = np.clip((frames + 0.5) * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def observation_rgb(image: np.ndarray) -> np.ndarray:
    """An environment's image observation -> uint8 (H, W, 3): MinAtar category maps (H, W)
    coloured as in the dreams, grayscale (H, W, 1) repeated."""
    if image.ndim == 2:
        return CATEGORY_COLOURS[np.clip(image, 0, len(CATEGORY_COLOURS) - 1)]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def enlarge(rgb: np.ndarray, scale: int) -> np.ndarray:
    return rgb.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _legend_entries(env_ids: list[str]) -> list[str | tuple[int, str]]:
    """Per MinAtar game: its name, then (category, channel name) for each of its categories."""
    entries: list[str | tuple[int, str]] = []
    for env_id in dict.fromkeys(env_ids):  # each game once, in order of appearance
        names = category_names(env_id)
        if names:
            entries.append(_game(env_id) + ':')
            entries.extend((i + 1, name) for i, name in enumerate(names))
    return entries


def _legend_layout(env_ids: list[str], width: int) -> list[tuple[int, int, str | tuple[int, str]]]:
    """(x, line, entry) of the legend entries wrapped at `width`; each game starts a new line."""
    placed, x, line = [], width, -1
    for entry in _legend_entries(env_ids):
        w = _text_width(entry) + 8 if isinstance(entry, str) else 14 + _text_width(entry[1]) + 10
        if isinstance(entry, str) or x + w > width:
            x, line = MARGIN, line + 1
        placed.append((x, line, entry))
        x += w
    return placed


def _draw_legend(draw: ImageDraw.ImageDraw, placed, top: int) -> None:
    for x, line, entry in placed:
        y = top + line * LINE
        if isinstance(entry, str):
            _text(draw, (x, y), entry)
        else:
            category, name = entry
            draw.rectangle((x, y + 2, x + 9, y + 11), fill=tuple(int(c) for c in CATEGORY_COLOURS[category]),
                           outline=TEXT)
            _text(draw, (x + 14, y), name)


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of one animation frame: a header line, the panel titles, one row of panels
    per sequence (its game at the left), and the legend."""
    rows: int
    panel: tuple[int, int]  # (height, width) of an enlarged frame
    label_width: int
    width: int
    legend_lines: int

    @property
    def top(self) -> int:
        return MARGIN + 2 * LINE

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the frame inside panel `col` of sequence `row` (right and bottom exclusive)."""
        h, w = self.panel
        left = MARGIN + self.label_width + col * (w + 2 * BORDER + GAP) + BORDER
        top = self.top + row * (h + 2 * BORDER + GAP) + BORDER
        return left, top, left + w, top + h

    @property
    def height(self) -> int:
        return self.box(self.rows - 1, 0)[3] + BORDER + GAP + self.legend_lines * LINE + MARGIN


@dataclass
class DreamFrames:
    """What the animation shows, as the model sees it: real, posterior and dream frames, each
    (T, N, C, H, W) float, the `context` steps the dream observed, and the env id of every
    sequence at every step (T, N) ('' where unknown)."""
    real: np.ndarray
    posterior: np.ndarray
    dream: np.ndarray
    context: int
    env_ids: list[list[str]]
    actor: bool = False


def animation(frames: DreamFrames, categorical: bool) -> tuple[list[Image.Image], Layout]:
    """One image per time step (see the module docstring) and the layout they share."""
    T, N = frames.real.shape[:2]
    scale = scale_for(frames.real.shape[-1])
    panels = [np.stack([to_rgb(kind[:, n], categorical) for n in range(N)], 1)  # (T, N, H, W, 3)
              for kind in (frames.real, frames.posterior, frames.dream)]
    games = [[_game(e) for e in step] for step in frames.env_ids]
    layout, legend = _animation_layout(panels[0].shape[2] * scale, panels[0].shape[3] * scale, games,
                                       [e for step in frames.env_ids for e in step] if categorical else [])
    background = _animation_background(layout, legend, "dream (actor's actions)" if frames.actor else 'dream')
    images = []
    for t in range(T):
        image = background.copy()
        draw = ImageDraw.Draw(image)
        observed = t < frames.context
        _text(draw, (MARGIN, MARGIN), f't = {t + 1} / {T}: dream {"observes" if observed else "imagines"} '
                                      f'(context {frames.context})')
        for n in range(N):
            _text(draw, (MARGIN, layout.box(n, 0)[1] + layout.panel[0] // 2 - LINE // 2), games[t][n])
            left, top, right, bottom = layout.box(n, 2)
            draw.rectangle((left - BORDER, top - BORDER, right + BORDER - 1, bottom + BORDER - 1),
                           fill=OBSERVED if observed else IMAGINED)
            for col, kind in enumerate(panels):
                image.paste(Image.fromarray(enlarge(kind[t, n], scale)), layout.box(n, col)[:2])
        images.append(image)
    return images, layout


def _animation_layout(h: int, w: int, games: list[list[str]], legend_env_ids: list[str]) -> tuple[Layout, list]:
    label_width = max([_text_width(g) + GAP for step in games for g in step] + [0])
    width = max(MARGIN + label_width + 3 * (w + 2 * BORDER) + 2 * GAP + MARGIN, 360)
    legend = _legend_layout(legend_env_ids, width - MARGIN)
    lines = 1 + max([line for _, line, _ in legend], default=-1)
    return Layout(len(games[0]), (h, w), label_width, width, lines), legend


def _animation_background(layout: Layout, legend: list, dream_title: str) -> Image.Image:
    """What every frame shares: the panel titles and the legend (drawn once: text is most of the cost)."""
    image = Image.new('RGB', (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for col, title in enumerate(('real', 'posterior', dream_title)):
        _text(draw, (layout.box(0, col)[0], MARGIN + LINE), title)
    _draw_legend(draw, legend, layout.box(layout.rows - 1, 0)[3] + BORDER + GAP)
    return image


def _game(env_id: str) -> str:
    """'MinAtar/Breakout-v0' -> 'Breakout', 'Atari-Space_Invaders' -> 'Space_Invaders'."""
    return re.sub(r'^Atari(Gray)?-|-v\d+$', '', env_id.split('/')[-1])


def episode_video(images: list[np.ndarray], env_id: str, caption: str = '') -> list[Image.Image]:
    """Frames of an episode (environment image observations) enlarged, with the step and, for
    MinAtar, the legend of the game's categories; `caption` goes into the header."""
    rgb = [enlarge(observation_rgb(image), scale_for(image.shape[0])) for image in images]
    h, w = rgb[0].shape[:2]
    width = max(w + 2 * MARGIN, 300)
    legend = _legend_layout([env_id], width - MARGIN) if images[0].ndim == 2 else []
    lines = 1 + max([line for _, line, _ in legend], default=-1)
    height = MARGIN + LINE + h + GAP + lines * LINE + MARGIN
    out = []
    for t, frame in enumerate(rgb):
        image = Image.new('RGB', (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        _text(draw, (MARGIN, MARGIN), f'{_game(env_id)}  t = {t} / {len(rgb) - 1}{caption}')
        image.paste(Image.fromarray(frame), (MARGIN, MARGIN + LINE))
        _draw_legend(draw, legend, MARGIN + LINE + h + GAP)
        out.append(image)
    return out


def dream_strip(rows: list[np.ndarray], categorical: bool, labels: list[str] | None = None,
                scale: int = 1, gap: int = 2) -> Image.Image:
    """Stack rows of frames `(T, C, H, W)` into one image, each row with its label at the left;
    `scale` enlarges small frames."""
    drawn = [enlarge(to_rgb(r, categorical), scale) for r in rows]
    labels = labels or [''] * len(rows)
    t = min(len(d) for d in drawn)
    h, w = drawn[0].shape[1:3]
    label_width = max(_text_width(label) for label in labels) + (2 * gap + 4 if any(labels) else 0)
    canvas = np.full((len(drawn) * (h + gap) - gap, label_width + t * (w + gap) - gap, 3), BACKGROUND[0], np.uint8)
    for i, frames in enumerate(drawn):
        for j in range(t):
            x = label_width + j * (w + gap)
            canvas[i * (h + gap):i * (h + gap) + h, x:x + w] = frames[j]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(labels):
        _text(draw, (2, i * (h + gap) + max(0, (h - 12) // 2) - 2), label)
    return image


def save_gif(images: list[Image.Image], path: Path, frame_ms: int) -> None:
    """An animated GIF (looping), written atomically."""
    with atomic_write(path) as f:
        images[0].save(f, format='GIF', save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


@torch.no_grad()
def dream_frames(model, obs: dict, n: int, context: int, use_actor: bool, env_ids: list[str]) -> DreamFrames:
    """Real frames, posterior reconstructions and the open-loop dream of the first `n` sequences
    of a preprocessed batch (T, B, ...), all from a fresh state. `env_ids` is the env list of the
    data, which `obs['env_id']` (multi-env data) indexes."""
    sub = {k: v[:, :n] for k, v in obs.items()}
    state = model.init_state(n)
    with model.autocast():
        posterior = model.wm.loss(sub, state, do_image_pred=True).tensors['image_rec']
    dream = model.dream(sub, state, context=context, use_actor=use_actor)['image_pred']
    T = sub['image'].shape[0]
    index = sub['env_id'].long().cpu().numpy() if 'env_id' in sub else np.zeros((T, n), int)  # (T, n)
    names = [[env_ids[i] if 0 <= i < len(env_ids) else '' for i in step] for step in index.tolist()]
    return DreamFrames(*(x.float().cpu().numpy() for x in (sub['image'], posterior, dream)), context, names, use_actor)


def data_env_ids(conf, data_run_id: str, run_id: str) -> list[str]:
    """The env list that the `env_id` of the data indexes: this run's, or the data run's config."""
    if data_run_id == run_id:
        value = conf.env_id
    else:
        from pydreamer.tracking import get_run
        value = yaml.safe_load(get_run(data_run_id).data.params.get('env_id', '') or '""')
    return [value] if isinstance(value, str) else list(value or [])


class DreamLogger:
    """Saves the dream GIF and PNG of a batch (module docstring) to `dreams/` of the run."""

    def __init__(self, conf, run_id: str, env_ids: list[str], work_dir: str):
        from pydreamer.artifacts import ArtifactFolder
        self.folder = ArtifactFolder(run_id, 'dreams')
        self.categorical = conf.image_categorical
        self.use_actor = conf.dream_actor
        self.env_ids = env_ids
        self.work_dir = Path(work_dir)

    def log(self, model, obs: dict, step: int) -> None:
        if 'image' not in obs:
            return
        T, B = obs['image'].shape[:2]
        frames = dream_frames(model, obs, min(DREAM_SEQUENCES, B), max(1, T // 4), self.use_actor, self.env_ids)
        rows, labels = [], []
        for n in range(frames.real.shape[1]):
            for kind, values in zip(PANELS, (frames.real, frames.posterior, frames.dream)):
                rows.append(values[:, n])                                        # (T, C, H, W)
                labels.append(f'{_game(frames.env_ids[0][n])} {kind}'.strip())
        strip = dream_strip(rows, self.categorical, labels, scale=max(1, 64 // frames.real.shape[-1]))
        images, _ = animation(frames, self.categorical)
        self._upload(f'dream_{step:07d}.png', strip.save)
        self._upload(f'dream_{step:07d}.gif', lambda path: save_gif(images, path, frame_ms=400))

    def _upload(self, name: str, write) -> None:
        path = self.work_dir / name
        write(path)
        self.folder.upload(path)
        path.unlink()
