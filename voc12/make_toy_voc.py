"""A small synthetic dataset in the exact PASCAL VOC 2012 layout (docs/method.md#data).

It exists so that every stage of the pipeline (labels, CAM training and
inference, affinity training, random walk, evaluation) can run end to end in
minutes on a CPU, and so that tests have a realistic VOC tree to read:

    <out>/JPEGImages/<id>.jpg                 RGB, long side ``size``, aspect like VOC's 500x375
    <out>/Annotations/<id>.xml                VOC schema, one <object> per visible object
    <out>/SegmentationClass/<id>.png          palette PNG: 0 background, 1..20 classes, 255 void band
    <out>/SegmentationClassAug/<id>.png       only with ``--with_aug``: the same indices as greyscale PNGs
    <out>/ImageSets/Segmentation/{train,val,trainval,train_aug}.txt   bare ids, train_aug = train

Six VOC classes are used, each with its own shape, colour and texture, on a
smooth, low-saturation textured background, so a tiny CNN can tell them apart
by colour *and* shape and a CAM can localise them. Object extents vary
log-uniformly over ``[min_extent, max_extent]`` of the long image side (at
least 4x by default, because scale is what SSENet is about); each image's first
object takes its extent from a stratified grid over the whole set, so the
extremes of the range are always present. Output is byte-identical for a given
seed (fixed JPEG quality, per-image generators seeded by ``(seed, index)``).
:func:`render_toy_scene` (image, instance owner map, classes) also serves the toy
sets of the other datasets (``coco14.make_toy_coco``, ``folder.make_toy_folder``).

    python -m voc12.make_toy_voc --out toy_voc --num_train 100 --num_val 30 --size 256 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tool import cli
from tool.cli import InputError, OutputExistsError
from tool.dataset import color_map, list_file
from tool.fileio import atomic_path, atomic_write_text, save_png
from tool.metrics import IGNORE_INDEX
from voc12.voc import CLASS_NAMES

MARKER_FILE = "toy_voc.json"
LIST_DIR = Path("ImageSets", "Segmentation")  # the devkit's lists, relative to its root
MANAGED_DIRS = ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets")


@dataclass(frozen=True)
class ToyClass:
    name: str
    shape: str
    colours: tuple[str, ...]  # names in COLOUR_FAMILIES; each object draws one
    texture: str


# Saturated colour families, each shared by two or three classes, and textures shared by two classes each:
# neither a pixel's colour nor its texture tells the class; the shape, with the colour/texture pair, does.
COLOUR_FAMILIES = {
    "red": (220, 45, 40),
    "orange": (235, 135, 30),
    "yellow": (230, 210, 40),
    "green": (45, 170, 60),
    "cyan": (35, 190, 205),
    "blue": (40, 80, 225),
    "magenta": (210, 55, 190),
}
TOY_CLASSES = (
    ToyClass("aeroplane", "cross", ("blue", "red", "yellow"), "stripes"),
    ToyClass("bird", "triangle", ("yellow", "green", "magenta"), "plain"),
    ToyClass("car", "square", ("red", "cyan", "orange"), "checker"),
    ToyClass("cat", "disc", ("green", "blue", "orange"), "plain"),
    ToyClass("person", "star", ("magenta", "orange", "cyan"), "checker"),
    ToyClass("tvmonitor", "ring", ("cyan", "red", "green"), "stripes"),
)
ALL_CLASSES = tuple(range(len(TOY_CLASSES)))
RING_HOLE = 0.45  # inner radius / outer radius
MIN_RING_WIDTH_PX = 4.0  # narrowest ring wall; the default 3 px void band leaves at least a 1 px line of it
OBJECTS_PER_IMAGE = (1, 2, 3)
OBJECTS_PER_IMAGE_P = (0.4, 0.35, 0.25)
MAX_OVERLAP = 0.3  # a new object may cover at most this fraction of the smaller of it and any placed object
PLACEMENT_TRIES = 50
JPEG_QUALITY = 90


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a shape in unit coordinates, centred, radius about 1 (a ring's hole is cut in _render_shape)."""

    def regular(n: int) -> np.ndarray:  # first vertex at the top
        angles = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape in ("disc", "ring"):
        return regular(48)
    if shape == "square":
        return np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
    if shape == "triangle":
        return regular(3)
    if shape == "star":
        return regular(10) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None]
    if shape == "cross":
        a = 0.33  # half-width of an arm
        top_and_right = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a)]
        bottom_and_left = [(a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        return np.array(top_and_right + bottom_and_left, dtype=np.float64)
    raise ValueError(f"unknown toy shape {shape!r}")


def _render_shape(shape: str, extent: float, angle: float, stretch: float) -> np.ndarray:
    """Binary (h, w) patch of a shape rotated by ``angle`` whose bounding box's long side is ``extent`` px."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    unit = _unit_polygon(shape) * (1.0, stretch)
    outline = unit @ rotation.T
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    scale = (extent - 1) / (hi - lo).max()  # PIL fills both end pixels, so a span of e-1 covers e pixels
    outlines = [outline]
    if shape == "ring":
        # A thin ring would vanish under the void band, so small rings get a smaller hole (none when tiny).
        hole = min(RING_HOLE, 1 - MIN_RING_WIDTH_PX / (scale * min(1.0, stretch)))
        if hole > 0:
            outlines.append((unit * hole) @ rotation.T)
    width, height = (np.ceil((hi - lo) * scale).astype(int) + 1).tolist()
    patch = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(patch)
    for fill, poly in zip((1, 0), outlines, strict=False):
        draw.polygon([tuple(p) for p in (poly - lo) * scale], fill=fill)
    return np.asarray(patch, dtype=bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth low-saturation colour field plus a gradient and fine noise, (H, W, 3) float."""
    coarse_h, coarse_w = rng.integers(3, 6, size=2)
    luminance = rng.uniform(70, 190, size=(coarse_h, coarse_w, 1))
    tint = rng.normal(0, 12, size=(coarse_h, coarse_w, 3)) + rng.normal(0, 8, size=3)  # low saturation
    coarse = np.clip(luminance + tint, 0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    medium = rng.normal(0, 10, size=(max(height // 8, 2), max(width // 8, 2))).astype(np.float32)
    field += np.asarray(Image.fromarray(medium).resize((width, height), Image.BILINEAR))[..., None]
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    field += rng.uniform(-30, 30) * (xx * np.cos(direction) + yy * np.sin(direction))[..., None]
    field += rng.normal(0, 4, size=field.shape)
    return field


def _object_colours(rng: np.random.Generator, toy: ToyClass, height: int, width: int, period: int) -> np.ndarray:
    """Textured fill of one object over a (height, width) patch, (h, w, 3) float."""
    family = toy.colours[int(rng.integers(len(toy.colours)))]
    colour = np.asarray(COLOUR_FAMILIES[family], dtype=np.float64) + rng.uniform(-20, 20, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    if toy.texture == "stripes":
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        shade = np.where(np.floor(phase) % 2 == 0, 1.0, 0.7)
    elif toy.texture == "checker":
        shade = np.where((xx // period + yy // period) % 2 == 0, 1.0, 0.75)
    else:
        shade = np.ones((height, width))
    return colour * shade[..., None] + rng.normal(0, 6, size=(height, width, 3))


def _void_band(visible: np.ndarray, void_width: int) -> np.ndarray:
    """Pixels within the boundary band of a region: ``ceil(w/2)`` px outside plus ``floor(w/2)`` px inside, like
    the void borders VOC draws around every object."""
    outer, inner = (void_width + 1) // 2, void_width // 2
    region = Image.fromarray(visible.astype(np.uint8) * 255)
    grown = np.asarray(region.filter(ImageFilter.MaxFilter(2 * outer + 1))) > 0 if outer else visible
    shrunk = np.asarray(region.filter(ImageFilter.MinFilter(2 * inner + 1))) > 0 if inner else visible
    return grown & ~shrunk


def _place(
    rng: np.random.Generator, patch: np.ndarray, placed: list[tuple[int, int, np.ndarray]], height: int, width: int
) -> tuple[int, int] | None:
    """A random top-left corner where ``patch`` fits inside the image and overlaps every placed object only a
    little; None when no such spot is found."""
    ph, pw = patch.shape
    if ph > height or pw > width:
        return None
    area = patch.sum()
    for _ in range(PLACEMENT_TRIES):
        y0, x0 = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        ok = True
        for oy, ox, other in placed:
            top, left = max(y0, oy), max(x0, ox)
            bottom, right = min(y0 + ph, oy + other.shape[0]), min(x0 + pw, ox + other.shape[1])
            if top >= bottom or left >= right:
                continue
            shared = (
                patch[top - y0 : bottom - y0, left - x0 : right - x0]
                & other[top - oy : bottom - oy, left - ox : right - ox]
            ).sum()
            if shared > MAX_OVERLAP * min(area, other.sum()):
                ok = False
                break
        if ok:
            return y0, x0
    return None


def _annotation_xml(image_id: str, width: int, height: int, objects: list[tuple[str, tuple[int, ...]]]) -> str:
    """VOC-schema annotation; boxes are (xmin, ymin, xmax, ymax), 1-based inclusive."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Synthetic toy VOC (voc12.make_toy_voc)"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"  # objects are always placed fully inside the image
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _layout(
    rng: np.random.Generator, height: int, width: int, classes: list[int], extents: list[float]
) -> list[tuple[int, int, int, np.ndarray]]:
    """Place one shape per (class, extent, a fraction of the long side); returns ``(y0, x0, class, mask)`` of
    those that found a spot. The first is placed into an empty image, so the stratified extents survive."""
    placed = []
    for cls, extent in zip(classes, extents, strict=True):
        pixels = min(extent * max(height, width), min(height, width))
        patch = _render_shape(TOY_CLASSES[cls].shape, pixels, rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25))
        spot = _place(rng, patch, [(y, x, m) for y, x, _, m in placed], height, width)
        if spot is not None:
            placed.append((*spot, cls, patch))
    return placed


def _paint(
    rng: np.random.Generator, canvas: np.ndarray, placed: list[tuple[int, int, int, np.ndarray]], period: int
) -> np.ndarray:
    """Paint the shapes in the given order (later ones occlude earlier ones); returns the owner map
    (0 background, k + 1 the k-th shape)."""
    owner = np.zeros(canvas.shape[:2], dtype=np.int64)
    for k, (y0, x0, cls, patch) in enumerate(placed):
        ph, pw = patch.shape
        fill = _object_colours(rng, TOY_CLASSES[cls], ph, pw, period)
        canvas[y0 : y0 + ph, x0 : x0 + pw][patch] = fill[patch]
        owner[y0 : y0 + ph, x0 : x0 + pw][patch] = k + 1
    return owner


def _void_mask(owner: np.ndarray, num_objects: int, void_width: int) -> np.ndarray:
    """The void band around every visible object."""
    void = np.zeros(owner.shape, dtype=bool)
    margin = (void_width + 1) // 2 + 1
    for k in range(num_objects):
        visible = owner == k + 1
        if visible.any() and void_width > 0:
            # Filter only a window around the object: rank filters over the whole image dominate the run time.
            rows, cols = np.nonzero(visible)
            window = (
                slice(max(rows.min() - margin, 0), rows.max() + margin + 1),
                slice(max(cols.min() - margin, 0), cols.max() + margin + 1),
            )
            void[window] |= _void_band(visible[window], void_width)
    return void


def _draw_objects(
    rng: np.random.Generator,
    primary_class: int,
    primary_extent: float,
    min_extent: float,
    max_extent: float,
    max_objects: int,
    class_pool: tuple[int, ...],
) -> tuple[list[int], list[float]]:
    """The classes (TOY_CLASSES indices) and extents of an image's shapes: the primary one, then up to
    ``max_objects - 1`` more of random classes from ``class_pool`` with log-uniform extents."""
    counts = OBJECTS_PER_IMAGE[:max_objects]
    p = np.asarray(OBJECTS_PER_IMAGE_P[:max_objects]) / sum(OBJECTS_PER_IMAGE_P[:max_objects])
    num_objects = int(rng.choice(counts, p=p))
    classes = [primary_class, *(class_pool[i] for i in rng.integers(0, len(class_pool), size=num_objects - 1))]
    log_range = np.log(max_extent / min_extent)
    extents = [primary_extent, *(min_extent * np.exp(rng.uniform(0, log_range, size=num_objects - 1))).tolist()]
    return classes, extents


def render_toy_scene(
    image_index: int,
    seed: int,
    size: int,
    primary_class: int | None,
    primary_extent: float,
    min_extent: float,
    max_extent: float,
    max_objects: int = 3,
    class_pool: tuple[int, ...] = ALL_CLASSES,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One synthetic image and its instances, without the void band.

    Returns ``(rgb (H, W, 3) uint8, owner (H, W) int64, classes)``: ``owner`` is 0 on the background and
    k + 1 where the k-th placed shape is visible (after occlusion; shapes are numbered in painting order,
    largest first), ``classes[k]`` is that shape's TOY_CLASSES index. ``primary_class`` (a TOY_CLASSES index)
    is the first shape's class; None gives an image of background only. Further shapes draw their classes
    from ``class_pool``. Extents are fractions of the long side.
    """
    rng = np.random.default_rng([seed, image_index])
    long_side, short_side = size, int(round(size * rng.uniform(0.66, 0.85)))
    height, width = (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)
    classes, extents = [], []
    if primary_class is not None:
        classes, extents = _draw_objects(
            rng, primary_class, primary_extent, min_extent, max_extent, max_objects, class_pool
        )
    placed = _layout(rng, height, width, classes, extents)
    placed.sort(key=lambda shape: -shape[3].sum())  # large ones first, so small ones stay visible
    canvas = _background(rng, height, width)
    owner = _paint(rng, canvas, placed, period=max(3, size // 40))
    rgb = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return rgb, owner, [cls for _, _, cls, _ in placed]


def toy_label(owner: np.ndarray, mask_indices: list[int], void_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The label map of an owner map: shape k becomes ``mask_indices[k]``, background 0, and the void band
    around every shape :data:`IGNORE_INDEX`; returns ``(label (H, W) uint8, void (H, W) bool)``."""
    class_of_owner = np.array([0, *mask_indices])
    label = class_of_owner[owner].astype(np.uint8)
    void = _void_mask(owner, len(mask_indices), void_width)
    label[void] = IGNORE_INDEX
    return label, void


def render_toy_image(
    image_index: int,
    seed: int,
    size: int,
    primary_class: int,
    primary_extent: float,
    min_extent: float,
    max_extent: float,
    void_width: int,
    max_objects: int = 3,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple[int, ...]]]]:
    """One synthetic image in VOC terms.

    Returns ``(rgb (H, W, 3) uint8, label (H, W) uint8, objects)`` where ``objects`` lists ``(class name, box)``
    for every object with at least one non-void pixel in ``label``, box 1-based inclusive around its visible
    pixels. ``primary_class`` indexes TOY_CLASSES; extents are fractions of the long side.
    """
    rgb, owner, classes = render_toy_scene(
        image_index, seed, size, primary_class, primary_extent, min_extent, max_extent, max_objects
    )
    label, void = toy_label(owner, [CLASS_NAMES.index(TOY_CLASSES[c].name) + 1 for c in classes], void_width)
    objects = []
    for k, cls in enumerate(classes):
        visible = owner == k + 1
        if not (visible & ~void).any():  # hidden or swallowed by the void band: not in the mask, so not in the XML
            continue
        rows, cols = np.nonzero(visible)
        box = (int(cols.min()) + 1, int(rows.min()) + 1, int(cols.max()) + 1, int(rows.max()) + 1)
        objects.append((TOY_CLASSES[cls].name, box))
    return rgb, label, objects


def prepare_toy_output(
    out: Path, marker: str = MARKER_FILE, managed: tuple[str, ...] = MANAGED_DIRS, maker: str = "make_toy_voc"
) -> None:
    """Refuse to write into a non-empty folder that is not a previous toy set of ``maker`` (no ``marker`` file:
    it might be a real dataset); clear the ``managed`` folders of a previous toy set so no stale ids survive."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, expected a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise OutputExistsError(
                f"--out {out} is not empty and was not made by {maker} (no {marker}); choose an empty or new folder"
            )
        for name in managed:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def check_toy_params(num_train: int, num_val: int, size: int, seed: int, params: dict) -> None:
    """Raise :class:`InputError` for a set size or renderer parameter out of range (``void_width`` only when
    ``params`` has it)."""
    if num_train < 1 or num_val < 1:
        raise InputError(f"--num_train and --num_val must be >= 1, got {num_train} and {num_val}")
    if size < 32:
        raise InputError(f"--size must be >= 32 px, got {size}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    if not 0 < params["min_extent"] <= params["max_extent"] <= 1:
        raise InputError(
            f"need 0 < --min_extent <= --max_extent <= 1, got {params['min_extent']} and {params['max_extent']}"
        )
    if params.get("void_width", 0) < 0:
        raise InputError(f"--void_width must be >= 0, got {params['void_width']}")
    if params["max_objects"] not in OBJECTS_PER_IMAGE:
        raise InputError(f"--max_objects must be one of {OBJECTS_PER_IMAGE}, got {params['max_objects']}")


def stratified_primaries(
    rng: np.random.Generator, num_images: int, class_pool: tuple[int, ...], min_extent: float, max_extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first object's class (from ``class_pool``) and extent of every image, stratified over the whole set:
    every class is the first object of some image (given enough images), and both extent extremes occur."""
    primary_classes = rng.permutation(np.asarray(class_pool)[np.arange(num_images) % len(class_pool)])
    grid = np.linspace(0.0, 1.0, num_images) if num_images > 1 else np.array([0.5])
    primary_extents = rng.permutation(min_extent * (max_extent / min_extent) ** grid)
    return primary_classes, primary_extents


def _write_image(out: Path, image_id: str, rgb, label, objects, palette, with_aug: bool) -> None:
    with atomic_path(out / "JPEGImages" / f"{image_id}.jpg") as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    height, width = label.shape
    atomic_write_text(out / "Annotations" / f"{image_id}.xml", _annotation_xml(image_id, width, height, objects))
    save_png(out / "SegmentationClass" / f"{image_id}.png", label, palette)
    if with_aug:
        # The widely shared SegmentationClassAug masks are greyscale PNGs holding the same indices.
        save_png(out / "SegmentationClassAug" / f"{image_id}.png", label)


def _write_lists(out: Path, ids: list[str], val_ids: set[str]) -> tuple[list[str], list[str]]:
    """The ImageSets/Segmentation lists; returns the train and val ids."""
    train = [i for i in ids if i not in val_ids]
    val = sorted(val_ids)
    lists = {"train": train, "val": val, "trainval": ids, "train_aug": train}
    for name, list_ids in lists.items():
        atomic_write_text(list_file(out / LIST_DIR, name), "".join(f"{i}\n" for i in list_ids))
    return train, val


def make_toy_voc(
    out: str | Path,
    num_train: int,
    num_val: int,
    size: int = 256,
    seed: int = 0,
    with_aug: bool = False,
    void_width: int = 3,
    min_extent: float = 0.10,
    max_extent: float = 0.50,
    max_objects: int = 3,
) -> dict[str, Any]:
    """Write a toy VOC 2012 tree under ``out``; returns a summary (also saved as ``<out>/toy_voc.json``).

    Summary keys: ``train``, ``val`` (sorted id lists), ``num_objects``, ``class_counts`` (objects per class
    name), ``extent_px`` ([min, max] long side of the object boxes), and the generation parameters.
    """
    params = {"void_width": void_width, "min_extent": min_extent, "max_extent": max_extent, "max_objects": max_objects}
    check_toy_params(num_train, num_val, size, seed, params)
    out = Path(out)
    prepare_toy_output(out)

    num_images = num_train + num_val
    rng = np.random.default_rng(seed)
    ids = [f"2007_{i + 1:06d}" for i in range(num_images)]
    val_ids = set(rng.choice(ids, size=num_val, replace=False).tolist())
    primary_classes, primary_extents = stratified_primaries(rng, num_images, ALL_CLASSES, min_extent, max_extent)

    palette = color_map()
    class_counts = {toy.name: 0 for toy in TOY_CLASSES}
    extents: list[int] = []
    for index, image_id in enumerate(ids):
        rgb, label, objects = render_toy_image(
            index, seed, size, int(primary_classes[index]), float(primary_extents[index]), **params
        )
        _write_image(out, image_id, rgb, label, objects, palette, with_aug)
        for name, (xmin, ymin, xmax, ymax) in objects:
            class_counts[name] += 1
            extents.append(max(xmax - xmin, ymax - ymin) + 1)

    train, val = _write_lists(out, ids, val_ids)

    summary = {
        "train": train,
        "val": val,
        "num_objects": len(extents),
        "class_counts": class_counts,
        "extent_px": [min(extents), max(extents)],
        "params": {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, "with_aug": with_aug},
    }
    summary["params"].update(params)
    atomic_write_text(out / MARKER_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


EXTENT = cli.float_range(0, 1, lo_open=True)


def add_toy_args(
    parser: argparse.ArgumentParser, size: int, train_list: str, val_list: str, void_band: bool = True
) -> None:
    """The flags every toy generator shares (VOC, COCO and folder layouts): set sizes, image size, seed, objects."""
    parser.add_argument("--num_train", type=cli.positive_int, default=100, help=f"images in {train_list}")
    parser.add_argument("--num_val", type=cli.positive_int, default=30, help=f"images in {val_list}")
    parser.add_argument(
        "--size", type=cli.int_range(32), default=size, help="long image side in px, >= 32 (short side 0.66-0.85 of it)"
    )
    parser.add_argument("--seed", type=cli.nonneg_int, default=0, help="same seed gives byte-identical files")
    if void_band:
        parser.add_argument(
            "--void_width",
            type=cli.nonneg_int,
            default=3,
            help="width in px of the 255 band drawn across every object boundary",
        )
    parser.add_argument(
        "--min_extent", type=EXTENT, default=0.10, help="smallest object box, fraction of long side in (0, 1]"
    )
    parser.add_argument(
        "--max_extent", type=EXTENT, default=0.50, help="largest object box, fraction of long side in (0, 1]"
    )
    parser.add_argument(
        "--max_objects", type=int, choices=OBJECTS_PER_IMAGE, default=3, help="at most this many objects per image"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic dataset in the PASCAL VOC 2012 layout.")
    parser.add_argument("--out", required=True, help="output folder (the --voc12_root of later stages)")
    add_toy_args(parser, 256, "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt")
    parser.add_argument(
        "--with_aug", action="store_true", help="also write SegmentationClassAug/ (greyscale PNGs, all images)"
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    summary = make_toy_voc(
        args.out,
        args.num_train,
        args.num_val,
        args.size,
        args.seed,
        args.with_aug,
        args.void_width,
        args.min_extent,
        args.max_extent,
        args.max_objects,
    )
    print(
        f"toy VOC in {args.out}: {len(summary['train'])} train + {len(summary['val'])} val images, "
        f"{summary['num_objects']} objects {summary['class_counts']}, "
        f"box sizes {summary['extent_px'][0]}-{summary['extent_px'][1]} px"
    )
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
