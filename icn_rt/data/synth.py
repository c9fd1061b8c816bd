"""Synthetic benchmark in VOC layout: objects recognisable only by a small part.

Every object is a class-agnostic *body* (a smooth random blob with a random texture drawn
from one distribution shared by all classes) with a small *part* on its rim whose shape
and colour tell the class. A classifier trained on image-level tags therefore fires on
the part, and a PRM covers the part only, while the instance mask is body + part: the
gap that cue propagation (ICN) and proposal matching have to close, as on VOC where a
PRM covers a dog's head and not its body.

The scene: a cluttered, textured background with distractor shapes (muted polygons,
ellipses and lines, and bodies without a part, which are background), 1-4 objects at scales from 0.2 to 0.6
of the image, drawn in depth order so later ones occlude earlier ones (each object keeps
at least 45% of its area and 65% of its part visible), and sometimes a thin occluder in
front. Deterministic: image ``i`` of a split is drawn from ``seed`` and ``(split, i)``
alone, so any subset can be regenerated bit for bit.

Splits: ``train`` (learning), ``dev`` (every choice: defaults, thresholds, options) and
``val`` (reporting only), each drawn apart.

Regimes (``body_evidence``): at 0 (the default, the harsh regime above) no image-level
signal points at a body. Above 0 the body carries class evidence too, as a dog's body
does on VOC: its hue is drawn around a class hue (spread ±90·(1 − e) OpenCV hue units of
180, so e = 1 fixes it), its texture is the class's kind with probability e, and its
aspect ratio moves towards a class aspect by e. ``distractor_bodies`` off leaves the
part-less bodies out (the scene is otherwise the same). At 0 the renderer draws exactly
the images it drew before the knob existed.

Backgrounds (``background``): ``plain`` (the smooth gradients above, the default, drawn
bit for bit as before the knob existed) or ``photo``: crops of real photographs
(:mod:`~icn_rt.data.photos`; ``photos`` names them, default
:data:`~icn_rt.data.photos.DEV_PHOTOS`) with clutter that competes with the objects —
blobs filled with other photos' textures (object-like, of no class), strong edges, and
the muted distractors and part-less bodies of the plain regime. Objects there are drawn
and annotated as in the plain regime but are harder to propose: every body wears a
photo's texture over its own colour, about half are split into two differently
coloured pieces, about a third fade into what lies under them (low-contrast edges), and
a photo-textured occluder often covers part of a scene (each object still keeps the
visible shares above).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from icn_rt.data import photos as photo_source
from icn_rt.data.voc import Instance, write_classes, write_sample, write_splits

# (class name, part colour RGB). The shape is drawn by _draw_part under the same name.
PARTS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("disc", (230, 40, 40)),
    ("triangle", (40, 200, 60)),
    ("square", (40, 90, 230)),
    ("star", (240, 200, 30)),
    ("cross", (200, 40, 210)),
    ("ring", (30, 210, 220)),
    ("diamond", (250, 130, 20)),
    ("hourglass", (250, 90, 160)),
)

MIN_VISIBLE = 0.45
MIN_PART_VISIBLE = 0.65
BACKGROUNDS = ("plain", "photo")
MIN_PART_PIXELS = 12  # photo regime: the least part an object may have inside the image


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic benchmark (saved as ``synth.json`` in the root)."""

    size: int = 128
    train: int = 500
    val: int = 500
    dev: int = 300
    classes: int = 5
    min_instances: int = 1
    max_instances: int = 4
    min_scale: float = 0.2
    max_scale: float = 0.6
    seed: int = 0
    jpeg_quality: int = 92
    body_evidence: float = 0.0
    distractor_bodies: bool = True
    background: str = "plain"
    photos: tuple[str, ...] = ()

    def __post_init__(self):
        if self.train < 0 or self.val < 0 or self.dev < 0:
            raise ValueError(f"image counts must be >= 0, got train={self.train}, dev={self.dev}, val={self.val}")
        if not 0 <= self.body_evidence <= 1:
            raise ValueError(f"body_evidence must be in [0, 1], got {self.body_evidence}")
        if not 1 <= self.classes <= len(PARTS):
            raise ValueError(f"classes must be 1..{len(PARTS)}, got {self.classes}")
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError("need 1 <= min_instances <= max_instances")
        if self.size < 48:
            raise ValueError(f"size must be at least 48 pixels, got {self.size}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError("need 0 < min_scale <= max_scale <= 1")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.photos and self.background != "photo":
            raise ValueError("photos are for background 'photo'")
        object.__setattr__(self, "photos", tuple(self.photos))
        if self.background == "photo":
            self.photo_names  # noqa: B018 - every photo is checked before the first image is drawn

    @property
    def photo_names(self) -> tuple[str, ...]:
        """The photographs backgrounds and textures come from (files of folders listed)."""
        return photo_source.expand(self.photos or photo_source.DEV_PHOTOS)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in PARTS[: self.classes])


@dataclass
class SynthImage:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    instances: list[Instance]  # visible masks, no overlap
    parts: list[np.ndarray]  # bool [H, W] visible part of each instance


def render(config: SynthConfig, split: str, index: int) -> SynthImage:
    """Draw image ``index`` of ``split``; depends on nothing else."""
    rng = np.random.default_rng([config.seed, _split_key(split), index])
    s = config.size
    photos = config.photo_names if config.background == "photo" else None
    canvas = _background(rng, s) if photos is None else photo_source.crop(rng, photos, s)
    for _ in range(rng.integers(3, 8)):
        _draw_distractor(rng, canvas)
    if photos is not None:
        _photo_clutter(rng, canvas, photos, config)
    if rng.random() < 0.5:  # a body without a part: looks like an object, is background
        body, _ = _body_mask(rng, s, rng.uniform(config.min_scale, config.max_scale) * s / 2)
        texture = _body_texture(rng, s)
        if config.distractor_bodies:
            _paint(canvas, body, texture)

    full: list[np.ndarray] = []
    part_full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    part_visible: list[np.ndarray] = []
    classes: list[int] = []
    n_objects = int(rng.integers(config.min_instances, config.max_instances + 1))
    for _ in range(n_objects):
        for _attempt in range(25):
            cls = int(rng.integers(config.classes))
            radius = rng.uniform(config.min_scale, config.max_scale) * s / 2
            look = _class_look(cls, config) if config.body_evidence > 0 else None
            body, rim = _body_mask(rng, s, radius, look)
            part = _part_mask(rng, s, PARTS[cls][0], rim, max(4.0, 0.32 * radius))
            obj = body | part
            # photo regime: a part drawn outside the image leaves no class evidence; the plain
            # regimes keep such objects (about 1.5 %), so that their images stay bit for bit
            if photos is not None and part.sum() < MIN_PART_PIXELS:
                continue
            if _accept_new(obj, part, full, part_full, visible, part_visible):
                break
        else:
            continue
        for j in range(len(visible)):
            visible[j] &= ~obj
            part_visible[j] &= ~obj
        texture = _body_texture(rng, s, look)
        if photos is not None:
            texture = _photo_body(rng, canvas, body, texture, photos, look)
        _paint(canvas, body, texture)
        _paint(canvas, part, _part_texture(rng, s, PARTS[cls][1]))
        full.append(obj)
        part_full.append(part)
        visible.append(obj.copy())
        part_visible.append(part.copy())
        classes.append(cls)

    if rng.random() < 0.3:  # a thin occluder in front of everything
        line = np.zeros((s, s), np.uint8)
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        cv2.line(line, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1, int(rng.integers(1, 3)))
        visible, part_visible = _occlude(canvas, line.astype(bool), lambda: _flat(rng, s), full, part_full,
                                         visible, part_visible)
    if photos is not None and rng.random() < 0.5:  # a photo-textured blob in front
        blob, _ = _body_mask(rng, s, rng.uniform(0.08, 0.2) * s)
        visible, part_visible = _occlude(canvas, blob, lambda: photo_source.crop(rng, photos, s), full, part_full,
                                         visible, part_visible)

    image = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    image = np.clip(image, 0, 255).astype(np.uint8)
    instances = [Instance(c, v) for c, v in zip(classes, visible)]
    return SynthImage(image, instances, part_visible)


def generate(out: str | Path, config: SynthConfig, progress: bool = True, layout: str = "voc") -> dict[str, list[str]]:
    """Write the benchmark under ``out`` in ``layout`` (voc, coco or tags: the VOC set
    converted by :func:`icn_rt.data.convert.convert_dataset`, same images and ids);
    returns ``{split: ids}``."""
    import json

    if layout != "voc":
        import shutil

        from icn_rt.data.convert import convert_dataset

        out = Path(out)
        staging = out.parent / f".{out.name}.voc"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            splits = generate(staging, config, progress)
            convert_dataset(staging, out, layout, progress=progress)
            shutil.copyfile(staging / "synth.json", out / "synth.json")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return splits

    from icn_rt.progress import track

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, config.class_names)
    (out / "synth.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    splits: dict[str, list[str]] = {}
    labels: dict[str, set[int]] = {}
    jobs = [(split, i) for split, n in (("train", config.train), ("dev", config.dev), ("val", config.val))
            for i in range(n)]
    items = track(jobs, "synthesising", unit="img") if progress else jobs
    for split, i in items:
        image_id = f"{split}_{i:06d}"
        sample = render(config, split, i)
        write_sample(out, image_id, sample.image, sample.instances, config.class_names)
        splits.setdefault(split, []).append(image_id)
        labels[image_id] = {inst.class_id for inst in sample.instances}
    splits["trainval"] = splits.get("train", []) + splits.get("val", [])
    write_splits(out, splits, config.class_names, labels)
    return splits


# --- drawing ------------------------------------------------------------------------

def _split_key(split: str) -> int:
    return int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")


def _accept_new(obj, part, full, part_full, visible, part_visible) -> bool:
    if obj.sum() < 40:
        return False
    return all(_visible_enough(v & ~obj, f, p & ~obj, pf)
               for v, f, p, pf in zip(visible, full, part_visible, part_full))


def _occlude(canvas, mask, texture, full, part_full, visible, part_visible):
    """Paint ``mask`` with ``texture()`` (drawn only then) in front of everything when every
    object keeps its visible shares; returns the objects' visible masks and parts after."""
    if not all(_visible_enough(v & ~mask, f, p & ~mask, pf)
               for v, f, p, pf in zip(visible, full, part_visible, part_full)):
        return visible, part_visible
    _paint(canvas, mask, texture())
    return [v & ~mask for v in visible], [p & ~mask for p in part_visible]


def _visible_enough(vis, full, part_vis, part_full) -> bool:
    return vis.sum() >= MIN_VISIBLE * full.sum() and part_vis.sum() >= MIN_PART_VISIBLE * part_full.sum()


def _noise_field(rng, s: int, cells: int, channels: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse grid upsampled bicubically."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    field = cv2.resize(grid, (s, s), interpolation=cv2.INTER_CUBIC)
    return np.clip(field.reshape(s, s, channels), 0, 1)


def _background(rng, s: int) -> np.ndarray:
    base = rng.uniform(40, 200, 3)
    low = (_noise_field(rng, s, int(rng.integers(3, 7)), 3) - 0.5) * rng.uniform(60, 140)
    grain = rng.normal(0, rng.uniform(4, 14), (s, s, 3))
    img = base + low + grain
    for _ in range(rng.integers(4, 12)):  # texture strokes
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour, 1)
    return img.astype(np.float32)


def _photo_clutter(rng, canvas: np.ndarray, photos: tuple[str, ...], config: SynthConfig) -> None:
    """Clutter over a photo background: 1-3 object-sized blobs filled with other photos'
    textures (of no class) and 2-5 strong edges (near-black or near-white lines, 1-3 px)."""
    s = canvas.shape[0]
    for _ in range(rng.integers(1, 4)):
        blob, _ = _body_mask(rng, s, rng.uniform(config.min_scale, config.max_scale) * s / 2)
        _paint(canvas, blob, photo_source.crop(rng, photos, s))
    for _ in range(rng.integers(2, 6)):
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        level = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # dark or light, never a part's hue
        colour = tuple(float(c) for c in np.clip(level + rng.uniform(-12, 12, 3), 0, 255))
        cv2.line(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour, int(rng.integers(1, 4)))


def _photo_body(rng, canvas: np.ndarray, body: np.ndarray, texture: np.ndarray, photos: tuple[str, ...],
                look: _Look | None) -> np.ndarray:
    """A body's texture in the photo regime: ``texture`` (its colour and class evidence)
    modulated by a photo's luminance; with probability 0.5 a piece beyond a random chord
    wears a second body colour, and with probability 0.35 the whole fades 30-60 % into
    what ``canvas`` shows under it (a low-contrast edge)."""
    s = canvas.shape[0]
    texture = texture * photo_source.luminance_modulation(rng, photos, s)
    if rng.random() < 0.5:
        ys, xs = np.nonzero(body)
        angle = rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        cut = np.quantile(along, rng.uniform(0.3, 0.7))
        yy, xx = np.mgrid[0:s, 0:s]
        piece = (xx * np.cos(angle) + yy * np.sin(angle)) > cut
        other = _body_texture(rng, s, look) * photo_source.luminance_modulation(rng, photos, s)
        texture = np.where(piece[..., None], other, texture)
    if rng.random() < 0.35:
        fade = rng.uniform(0.3, 0.6)
        texture = (1 - fade) * texture + fade * canvas
    return texture.astype(np.float32)


def _flat(rng, s: int) -> np.ndarray:
    return np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (s, s, 3))


def _paint(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
    canvas[mask] = texture[mask]


def _muted_colour(rng) -> tuple[float, float, float]:
    """A desaturated colour: distractors must not pass for a (saturated) class part."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 70), rng.uniform(30, 230)]]], np.uint8)
    return tuple(float(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _draw_distractor(rng, canvas: np.ndarray) -> None:
    s = canvas.shape[0]
    colour = _muted_colour(rng)
    kind = rng.integers(3)
    if kind == 0:  # random polygon
        n = int(rng.integers(3, 8))
        c = rng.uniform(0, s, 2)
        pts = c + rng.normal(0, rng.uniform(0.05, 0.15) * s, (n, 2))
        cv2.fillPoly(canvas, [pts.astype(np.int32)], colour)
    elif kind == 1:  # ellipse
        c = rng.uniform(0, s, 2)
        axes = rng.uniform(0.03, 0.12, 2) * s
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), (int(axes[0]) + 1, int(axes[1]) + 1),
                    float(rng.uniform(0, 180)), 0, 360, colour, -1)
    else:  # thick line
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        cv2.line(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour, int(rng.integers(2, 5)))


@dataclass(frozen=True)
class _Look:
    """A body's class evidence: the class's ``hue`` (OpenCV units, 0-180), texture ``kind``
    and ``aspect`` ratio, and how strongly the body follows them (``evidence``, 0-1)."""

    hue: float
    kind: int
    aspect: float
    evidence: float


def _class_look(cls: int, config: SynthConfig) -> _Look:
    """Class ``cls``'s body look: hues evenly spread, texture kinds in turn, aspect ratios
    from 1 down to 0.55."""
    return _Look(hue=(cls + 0.5) * 180 / config.classes, kind=cls % 3,
                 aspect=1.0 - 0.45 * cls / max(config.classes - 1, 1), evidence=config.body_evidence)


def _body_mask(rng, s: int, radius: float, look: _Look | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random blob: ``(mask bool [s, s], rim float [64, 2] xy points)``; ``look``:
    its class evidence (None: none)."""
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4):
        r += rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.6, 1.0)
    if look is not None:
        aspect = (1 - look.evidence) * aspect + look.evidence * look.aspect
    rot = rng.uniform(0, 2 * np.pi)
    x, y = radius * r * np.cos(theta), radius * aspect * r * np.sin(theta)
    xr, yr = x * math.cos(rot) - y * math.sin(rot), x * math.sin(rot) + y * math.cos(rot)
    margin = 0.5 * radius
    cx, cy = rng.uniform(margin, s - margin, 2)
    rim = np.stack([xr + cx, yr + cy], axis=1)
    mask = np.zeros((s, s), np.uint8)
    cv2.fillPoly(mask, [np.round(rim).astype(np.int32)], 1)
    return mask.astype(bool), rim


def _body_texture(rng, s: int, look: _Look | None = None) -> np.ndarray:
    """Texture of a body: any hue, striped, spotted or mottled; with a ``look``, the hue
    near the class's and the kind the class's with probability ``look.evidence``."""
    if look is None:
        hue = rng.uniform(0, 180)
    else:
        hue = (look.hue + (1 - look.evidence) * rng.uniform(-90, 90)) % 180
    hsv = np.array([[[hue, rng.uniform(50, 160), rng.uniform(90, 230)]]], np.float32)
    base = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    kind = rng.integers(3) if look is None or rng.random() >= look.evidence else look.kind
    if kind == 0:
        a = rng.uniform(0, np.pi)
        period = rng.uniform(4, 10)
        mod = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
    elif kind == 1:
        mod = (_noise_field(rng, s, int(s // rng.uniform(4, 8)), 1)[..., 0] - 0.5) * 3
    else:
        mod = (_noise_field(rng, s, 6, 1)[..., 0] - 0.5) * 2
    amp = rng.uniform(15, 40)
    tex = base + amp * mod[..., None] + rng.normal(0, 5, (s, s, 3))
    return tex.astype(np.float32)


def _part_texture(rng, s: int, colour: tuple[int, int, int]) -> np.ndarray:
    jitter = rng.uniform(-18, 18, 3)
    return (np.array(colour, np.float32) + jitter + rng.normal(0, 4, (s, s, 3))).astype(np.float32)


def _part_mask(rng, s: int, shape: str, rim: np.ndarray, size: float) -> np.ndarray:
    """The class part, centred on a random rim point of the body."""
    cx, cy = rim[rng.integers(len(rim))]
    rot = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((s, s), np.uint8)

    def poly(points):
        pts = np.asarray(points, np.float64)
        c, sn = math.cos(rot), math.sin(rot)
        xy = np.stack([pts[:, 0] * c - pts[:, 1] * sn + cx, pts[:, 0] * sn + pts[:, 1] * c + cy], 1)
        cv2.fillPoly(mask, [np.round(xy).astype(np.int32)], 1)

    r = size
    if shape == "disc":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    elif shape == "triangle":
        poly([(r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 3, endpoint=False)])
    elif shape == "square":
        h = r * 0.8
        poly([(-h, -h), (h, -h), (h, h), (-h, h)])
    elif shape == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False))]
        poly(pts)
    elif shape == "cross":
        t = 0.35 * r
        poly([(-r, -t), (r, -t), (r, t), (-r, t)])
        poly([(-t, -r), (t, -r), (t, r), (-t, r)])
    elif shape == "ring":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, max(2, int(round(0.4 * r))))
    elif shape == "diamond":
        poly([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
    elif shape == "hourglass":
        poly([(-0.8 * r, -r), (0.8 * r, -r), (-0.8 * r, r), (0.8 * r, r)])
    else:
        raise ValueError(f"unknown part shape {shape}")
    return mask.astype(bool)
