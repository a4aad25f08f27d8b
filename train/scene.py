"""Synthetic road scenes: one frame (image and exact labels) from (seed, split, index), for
train/synth.py, which writes them in the Cityscapes layout.

Each frame is a street seen from a car: a pinhole camera above a ground plane, facades, walls,
fences and hedges on vertical planes along both kerbs (ray-cast per pixel, so perspective and
occlusion are exact), then cars, people, trees, poles and signs drawn as flat cut-outs at their
ground position, far to near. Labels are rasterised from the same polygons as the pixels, so
they are crisp and exact. The ego car's bonnet (and sometimes a rectification border) gives
ignore-mapped pixels.

Colour alone does not give the class: cars, facades, walls, clothes and the ego hood draw their
paint from one shared palette, road and sidewalk are overlapping greys, terrain and vegetation
overlapping greens, an overcast sky is as grey as a facade, and haze pulls far things towards the
sky colour. Lighting, shadows, colour casts, blur and noise vary per frame.

Frame i of a split depends only on (seed, split, i).

Why one ~700-line module: it is a single renderer whose parts (camera, street layout, look,
background ray-casting, cut-out objects, camera effects) share its palettes, label ids and NamedTuples,
and are read top to bottom in the order a frame is built; the Cityscapes writing lives in synth.py.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

SPLIT_STREAMS = {"train": 0, "val": 1}  # each split draws from its own random stream

# Cityscapes label ids drawn here (ego vehicle and rectification border map to ignore)
EGO, BORDER = 1, 2
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 17, 20, 21, 22, 23, 24, 26
# 12 of the 19 classes: the small demo model must learn each in minutes. Traffic lights (a few
# pixels at this size) and buses/trucks (rare) would mostly add noise to its mIoU.
DRAWN_IDS = (ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
             PERSON, CAR)

# One paint palette (RGB) for facades, cars, walls, fences, clothes and the hood: colour alone
# must not tell a car from a house.
SHARED_PAINT = np.array([
    (205, 205, 200), (150, 150, 150), (105, 105, 110), (60, 60, 66), (190, 175, 145),
    (160, 95, 70), (120, 72, 56), (70, 95, 140), (150, 165, 185), (95, 120, 80),
    (170, 52, 45), (205, 180, 90), (230, 225, 210), (110, 86, 62), (40, 70, 60),
], dtype=np.float32)
WALL_PAINT = SHARED_PAINT[[0, 1, 2, 4, 5, 6, 12, 13]]
FENCE_PAINT = SHARED_PAINT[[1, 2, 3, 9, 13, 14, 0]]
POLE_PAINT = SHARED_PAINT[[1, 2, 3, 14, 8]]

# kinds of the wall-like segments along the kerbs; NONE leaves a gap to see what is behind
NONE, KIND_BUILDING, KIND_VEGETATION, KIND_WALL, KIND_FENCE = 0, 1, 2, 3, 4
KIND_LABEL = np.array([SKY, BUILDING, VEGETATION, WALL, FENCE], dtype=np.uint8)

DEFAULT_SIZE = (256, 512)


class Camera(NamedTuple):
    height: int       # image rows
    width: int        # image columns
    focal: float      # pixels
    cam_y: float      # camera height above the ground, metres
    horizon: float    # image row of the horizon
    vanish_x: float   # image column of the street's vanishing point

    def project(self, x, z, y=0.0):
        """Image (column, row) of world points x metres right, y up, z ahead (scalars or arrays)."""
        return (self.vanish_x + self.focal * x / z,
                self.horizon + self.focal * (self.cam_y - y) / z)

    def first_visible(self, x: float) -> float:
        """The distance at which a point x metres to the side enters the picture."""
        room = self.width - self.vanish_x if x > 0 else self.vanish_x
        return self.focal * abs(x) / room


class Segments(NamedTuple):
    """Consecutive pieces of one wall line: piece k spans edges[k]..edges[k+1]."""
    edges: np.ndarray    # [n+1] metres along the line
    kinds: np.ndarray    # [n] NONE / KIND_*
    heights: np.ndarray  # [n] metres
    colours: np.ndarray  # [n, 3] RGB
    pattern: np.ndarray  # [n, 4] facades: window spacing along, floor height, window width and
                         # height fractions; walls: the same numbers scaled into block sizes


class WallLine(NamedTuple):
    side: int             # -1 left of the street, +1 right
    distance: float       # metres from the camera's line of travel
    segments: Segments


class Street(NamedTuple):
    road_left: float      # kerb positions (metres, camera at x=0)
    road_right: float
    lanes: int
    bands: np.ndarray     # ground band edges in x: terrain|sidewalk|verge|road|verge|sidewalk|terrain
    band_labels: np.ndarray
    front: Tuple[float, float]        # distance of the front wall lines (left, right)
    lines: List[WallLine]             # garden fences, front and back rows along both sides
    far_z: float
    far: Optional[Segments]           # across the street at far_z, along x


class Look(NamedTuple):
    """Per-frame colours and textures."""
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    overcast: bool
    road: np.ndarray
    sidewalk: np.ndarray
    sidewalk_tile: float
    verge_green: np.ndarray
    terrain: np.ndarray
    marking: np.ndarray
    haze_distance: float
    sun_side: int          # -1 sun from the left, +1 from the right
    shade: float           # brightness of shaded surfaces


# ---------------------------------------------------------------------------------------------
# textures

def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cell: float) -> np.ndarray:
    """Noise in [-1, 1] varying over about `cell` pixels (random grid, cubic upsampling)."""
    h, w = shape
    grid = rng.uniform(-1, 1, (int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
    big = cv2.resize(grid, (int(grid.shape[1] * cell), int(grid.shape[0] * cell)),
                     interpolation=cv2.INTER_CUBIC)
    skip = int(cell)  # the first cell is skewed by the border
    return np.clip(big[skip:skip + h, skip:skip + w], -1, 1)


def _stripe(coord: np.ndarray, period: float, duty: float) -> np.ndarray:
    """1 where coord falls in the first `duty` fraction of each period."""
    return (np.mod(coord, period) < duty * period).astype(np.float32)


def _resolvable(size_m: np.ndarray, z: np.ndarray, focal: float, min_px: float = 2.0) -> np.ndarray:
    """Fade patterns out where they shrink below a few pixels, instead of aliasing into noise."""
    return np.clip(size_m * focal / np.maximum(z, 1e-3) / min_px - 0.5, 0.0, 1.0)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 6, 3), 10, 245)


def _pick(rng: np.random.Generator, palette: np.ndarray, amount: float = 0.12) -> np.ndarray:
    return _jitter(rng, palette[rng.integers(len(palette))], amount).astype(np.float32)


def _green(rng: np.random.Generator) -> np.ndarray:
    # vegetation and terrain draw from the same range of greens (and a little autumn brown)
    g = rng.uniform(75, 150)
    return np.array([g * rng.uniform(0.45, 0.95), g, g * rng.uniform(0.3, 0.6)], dtype=np.float32)


def _grey(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    v = rng.uniform(low, high)
    return np.clip(v + rng.normal(0, 4, 3), 0, 255).astype(np.float32)


def choose_look(rng: np.random.Generator) -> Look:
    overcast = bool(rng.random() < 0.35)
    if overcast:
        top = _grey(rng, 150, 215)
        horizon = np.clip(top + rng.uniform(0, 20), 0, 255)
    else:
        top = np.array([rng.uniform(50, 110), rng.uniform(110, 160), rng.uniform(180, 235)], np.float32)
        horizon = np.clip(top + np.array([rng.uniform(50, 100), rng.uniform(40, 70), rng.uniform(5, 20)]),
                          0, 250).astype(np.float32)
    brick_sidewalk = rng.random() < 0.2
    sidewalk = _pick(rng, SHARED_PAINT[[5, 6]]) if brick_sidewalk else _grey(rng, 100, 175)
    return Look(
        sky_top=top, sky_horizon=horizon, overcast=overcast,
        road=_grey(rng, 70, 135) * np.array([1.0, 1.0, rng.uniform(1.0, 1.08)], np.float32),
        sidewalk=sidewalk, sidewalk_tile=float(rng.uniform(0.4, 1.2)),
        verge_green=_green(rng), terrain=_green(rng),
        marking=_grey(rng, 190, 235), haze_distance=float(rng.uniform(250, 800)),
        sun_side=int(rng.choice([-1, 1])), shade=float(rng.uniform(0.55, 0.85)))


# ---------------------------------------------------------------------------------------------
# scene layout

# (probability of each kind NONE, building, vegetation, wall, fence; their height ranges in metres)
FRONT_URBAN = ((0.06, 0.4, 0.1, 0.22, 0.22), (0, (7, 25), (1.5, 8), (1.0, 3.0), (1.0, 2.2)))
FRONT_GREEN = ((0.15, 0.15, 0.3, 0.2, 0.2), (0, (7, 25), (1.5, 8), (1.0, 3.0), (1.0, 2.2)))
GARDEN = ((0.2, 0.0, 0.25, 0.3, 0.25), (0, 0, (0.8, 2.0), (0.6, 1.6), (0.9, 2.0)))
BACK_URBAN = ((0.15, 0.55, 0.3, 0.0, 0.0), (0, (12, 35), (5, 14), 0, 0))
BACK_GREEN = ((0.25, 0.25, 0.5, 0.0, 0.0), (0, (12, 35), (5, 14), 0, 0))
PIECE_LENGTH = ((3, 15), (8, 35), (5, 25), (5, 20), (5, 25))
PIECE_PAINT = (None, SHARED_PAINT, None, WALL_PAINT, FENCE_PAINT)


def _segments(rng: np.random.Generator, start: float, end: float, recipe: Tuple[tuple, tuple]) -> Segments:
    """Pieces along a wall line: facades, hedges, walls, fences or gaps, each its own look."""
    kind_p, height_ranges = recipe
    edges, kinds, heights, colours, pattern = [start], [], [], [], []
    while edges[-1] < end:
        kind = int(rng.choice(5, p=kind_p))
        edges.append(edges[-1] + rng.uniform(*PIECE_LENGTH[kind]))
        kinds.append(kind)
        heights.append(rng.uniform(*height_ranges[kind]) if kind != NONE else 0.0)
        if kind == KIND_VEGETATION:
            colours.append(_green(rng) * rng.uniform(0.7, 1.0))
        elif kind == NONE:
            colours.append(np.zeros(3, np.float32))
        else:
            colours.append(_pick(rng, PIECE_PAINT[kind]))
        pattern.append([rng.uniform(1.6, 3.5), rng.uniform(2.8, 3.6),
                        rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.65)])
    return Segments(np.array(edges, np.float32), np.array(kinds, np.int64),
                    np.array(heights, np.float32), np.array(colours, np.float32),
                    np.array(pattern, np.float32))


def choose_street(rng: np.random.Generator) -> Street:
    lanes = int(rng.integers(2, 5))
    own_lane = int(rng.integers(0, lanes))
    road_left = 1.6 + 3.2 * own_lane
    road_right = 3.2 * lanes - road_left
    sides = []
    for _ in range(2):
        verge = rng.uniform(1.0, 3.0) if rng.random() < 0.3 else 0.0
        sidewalk = rng.uniform(2.0, 5.0)
        lawn = rng.uniform(2.0, 8.0) if rng.random() < 0.5 else 0.0
        sides.append((verge, sidewalk, lawn))
    (vl, sl, ll), (vr, sr, lr) = sides
    bands = np.array([
        -road_left - vl - sl, -road_left - vl, -road_left,
        road_right, road_right + vr, road_right + vr + sr], np.float32)
    band_labels = np.array([TERRAIN, SIDEWALK, TERRAIN, ROAD, TERRAIN, SIDEWALK, TERRAIN], np.uint8)
    front = (road_left + vl + sl + ll, road_right + vr + sr + lr)
    far_z = float(rng.uniform(60, 250))
    urban = rng.random() < 0.75
    lines = []
    for side, walk_out, lawn, wall_line in ((-1, bands[0], ll, front[0]), (1, bands[5], lr, front[1])):
        if lawn > 0 and rng.random() < 0.85:  # front gardens: low fences, walls and hedges
            lines.append(WallLine(side, abs(float(walk_out)), _segments(rng, 0, far_z, GARDEN)))
        lines.append(WallLine(side, wall_line, _segments(rng, 0, far_z, FRONT_URBAN if urban else FRONT_GREEN)))
        lines.append(WallLine(side, wall_line + rng.uniform(6, 20),
                              _segments(rng, 0, far_z, BACK_URBAN if urban else BACK_GREEN)))
    far = None
    if rng.random() < 0.75:
        span = max(line.distance for line in lines) + 5
        far = _segments(rng, -span, span, BACK_URBAN)
    return Street(road_left, road_right, lanes, bands, band_labels, front, lines, far_z, far)


# ---------------------------------------------------------------------------------------------
# background: ray-cast ground, wall lines and the far row per pixel

class Canvas(NamedTuple):
    """The frame being painted: colour, labels and depth, far to near."""
    rgb: np.ndarray     # HxWx3 float32
    label: np.ndarray   # HxW uint8 labelIds
    depth: np.ndarray   # HxW float32 metres (inf for sky)


def _haze(look: Look, colour: np.ndarray, z: np.ndarray) -> np.ndarray:
    amount = 1.0 - np.exp(-np.asarray(z, np.float32) / look.haze_distance)
    return colour + (look.sky_horizon - colour) * amount[..., None]


def _sky(cam: Camera, look: Look, rng: np.random.Generator) -> np.ndarray:
    rows = np.linspace(0, 1, cam.height, dtype=np.float32)
    t = np.clip(rows / max(cam.horizon / cam.height, 0.05), 0, 1)[:, None, None]
    sky = look.sky_top + (look.sky_horizon - look.sky_top) * t
    clouds = np.clip(smooth_noise(rng, (cam.height, cam.width), cam.width / 6) * 1.6 - 0.2, 0, 1)
    cloud_colour = np.float32(235 if not look.overcast else look.sky_top.mean() + 15)
    sky = sky + (cloud_colour - sky) * (clouds * rng.uniform(0.3, 0.9))[..., None]
    return np.broadcast_to(sky, (cam.height, cam.width, 3)).astype(np.float32)


def _ground_colour(cam: Camera, street: Street, look: Look, x: np.ndarray, z: np.ndarray,
                   band: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    colour = np.empty(x.shape + (3,), np.float32)
    label = street.band_labels[band]
    road = label == ROAD
    walk = label == SIDEWALK
    green = label == TERRAIN
    # asphalt: patches and grain; dashed lane lines, solid edge lines
    lane_edges = -street.road_left + 3.2 * np.arange(1, street.lanes)
    lane_dist = np.min(np.abs(x[road][:, None] - lane_edges[None, :]), axis=1) if street.lanes > 1 \
        else np.full(road.sum(), 9.0, np.float32)
    edge_dist = np.minimum(np.abs(x[road] + street.road_left - 0.3), np.abs(x[road] - street.road_right + 0.3))
    zr = z[road]
    dash = _stripe(zr, 9.0, 0.35) * (lane_dist < 0.07)
    line = (edge_dist < 0.07).astype(np.float32)
    marks = np.maximum(dash, line) * np.clip(0.14 * cam.focal / zr, 0, 1)
    base = look.road * (1 + 0.06 * fine[road] + 0.08 * coarse[road])[:, None]
    colour[road] = base + (look.marking - base) * marks[:, None]
    # sidewalk: tiles and a light kerb stone along the road
    xs, zs = x[walk], z[walk]
    tile = look.sidewalk_tile
    joints = np.maximum(_stripe(xs, tile, 0.06), _stripe(zs, tile, 0.06)) * _resolvable(tile, zs, cam.focal, 6)
    kerb = ((np.abs(xs + street.road_left) < 0.25) | (np.abs(xs - street.road_right) < 0.25))
    shade = (1 - 0.22 * joints + 0.18 * kerb + 0.05 * fine[walk] + 0.05 * coarse[walk])
    colour[walk] = look.sidewalk * shade[:, None]
    # grass: stronger grain than asphalt, no structure
    verge = (band[green] == 2) | (band[green] == 4)
    grass = np.where(verge[:, None], look.verge_green, look.terrain)
    colour[green] = grass * (1 + 0.16 * fine[green] + 0.12 * coarse[green])[:, None]
    return colour


def _line_colour(cam: Camera, look: Look, seg: Segments, idx: np.ndarray, along: np.ndarray,
                 up: np.ndarray, z: np.ndarray, fine: np.ndarray, leaf: np.ndarray) -> np.ndarray:
    """Colours of hits on a wall line at (along, up) metres; depth z for pattern fading."""
    kind = seg.kinds[idx]
    colour = seg.colours[idx] * (1 + 0.05 * fine)[:, None]
    # facades: window grid above a ground floor, darker cornice
    win = seg.pattern[idx]
    in_window = ((np.mod(along, win[:, 0]) < win[:, 2] * win[:, 0])
                 & (np.mod(up, win[:, 1]) > (1 - win[:, 3]) * win[:, 1])
                 & (up > 3.0) & (up < seg.heights[idx] - 1.0))
    window_fade = _resolvable(0.4 * win[:, 0], z, cam.focal, 2)
    glass = np.float32([38, 44, 56]) + 50 * (leaf[:, None] + 1) * np.float32([0.4, 0.5, 0.7])
    facade = kind == KIND_BUILDING
    w = (in_window & facade).astype(np.float32) * window_fade
    colour = colour + (glass - colour) * w[:, None]
    shop = facade & (up < 3.0) & (up > 0.4) & (np.mod(along, 6.0) < 4.0)
    colour[shop] *= 0.55
    cornice = facade & (up > seg.heights[idx] - 0.6)
    colour[cornice] *= 0.8
    # hedges and tree rows: leafy light and dark blotches
    veg = kind == KIND_VEGETATION
    colour[veg] *= (1 + 0.35 * leaf[veg])[:, None]
    # walls: masonry courses in a running bond under a coping stone
    wall = kind == KIND_WALL
    block, course = win[wall, 0] / 3, win[wall, 1] / 8  # 0.5-1.2 m blocks, 0.35-0.45 m courses
    row = np.floor(up[wall] / course)
    bed = np.mod(up[wall], course) < 0.05
    head = np.mod(along[wall] + (row % 2) * block / 2, block) < 0.05
    joints = (bed | head) * _resolvable(0.1, z[wall], cam.focal, 1)
    top = up[wall] > seg.heights[idx][wall] - 0.15
    colour[wall] *= (1 - 0.3 * joints + 0.2 * top)[:, None]
    # fences: slats with dark gaps between posts and under a top rail
    fence = kind == KIND_FENCE
    gaps = (1 - _stripe(along[fence], 0.3, 0.55)) * _resolvable(0.3, z[fence], cam.focal, 3)
    rail = (up[fence] > seg.heights[idx][fence] - 0.12) | (np.mod(along[fence], 2.5) < 0.12)
    colour[fence] *= (1 - 0.6 * gaps * ~rail)[:, None]
    return colour


def _top_bumps(seg: Segments, idx: np.ndarray, along: np.ndarray, phase: float) -> np.ndarray:
    """Irregular tops for hedges and tree rows (facades, walls and fences stay straight)."""
    bumps = 0.5 * np.sin(along * 0.9 + phase) + 0.35 * np.sin(along * 2.3 + 2 * phase)
    return np.where(seg.kinds[idx] == KIND_VEGETATION, bumps * np.minimum(seg.heights[idx] * 0.25, 1.5), 0.0)


def render_background(rng: np.random.Generator, cam: Camera, street: Street, look: Look) -> Canvas:
    h, w = cam.height, cam.width
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dx, dy = cols - cam.vanish_x, rows - cam.horizon
    rgb = _sky(cam, look, rng).copy()
    label = np.full((h, w), SKY, np.uint8)
    depth = np.full((h, w), np.inf, np.float32)
    fine = smooth_noise(rng, (h, w), 1.5)
    coarse = smooth_noise(rng, (h, w), 24)
    leaf = np.clip(smooth_noise(rng, (h, w), 3) * 0.7 + smooth_noise(rng, (h, w), 9) * 0.5, -1, 1)

    # ground plane: bands across the street
    below = dy > 0.5
    zg = np.where(below, cam.focal * cam.cam_y / np.maximum(dy, 0.5), np.inf).astype(np.float32)
    xg = dx * zg / cam.focal
    ground = below & (zg < 1e4)
    band = np.searchsorted(street.bands, xg[ground])
    label[ground] = street.band_labels[band]
    depth[ground] = zg[ground]
    colour = _ground_colour(cam, street, look, xg[ground], zg[ground], band, fine[ground], coarse[ground])
    colour *= _shadows(rng, street, look, xg[ground], zg[ground])[:, None]
    rgb[ground] = _haze(look, colour, zg[ground])

    flat = Canvas(rgb.reshape(-1, 3), label.reshape(-1), depth.reshape(-1))
    fine, leaf, dx, dy = fine.ravel(), leaf.ravel(), dx.ravel(), dy.ravel()

    def draw_wall(pix: np.ndarray, z: np.ndarray, along: np.ndarray, up: np.ndarray, seg: Segments,
                  lit: float, phase: float) -> None:
        """Paint pixels whose rays meet wall line `seg` at depth z, at (along, up) metres on it."""
        near = (up >= 0) & (z < flat.depth[pix]) & (along > seg.edges[0]) & (along < seg.edges[-1])
        pix, z, along, up = pix[near], z[near], along[near], up[near]
        idx = np.searchsorted(seg.edges, along, side="right") - 1
        hit = (seg.kinds[idx] != NONE) & (up < seg.heights[idx] + _top_bumps(seg, idx, along, phase))
        pix, z, along, up, idx = pix[hit], z[hit], along[hit], up[hit], idx[hit]
        colour = _line_colour(cam, look, seg, idx, along, up, z, fine[pix], leaf[pix])
        flat.rgb[pix] = _haze(look, colour * lit, z)
        flat.label[pix] = KIND_LABEL[seg.kinds[idx]]
        flat.depth[pix] = z

    # wall lines along both sides (garden, front, back), each a vertical plane along the street
    facing = {side: np.flatnonzero(dx * side > 0.5) for side in (-1, 1)}
    for side, distance, seg in street.lines:
        pix = facing[side]
        z = cam.focal * distance / (dx[pix] * side)
        lit = look.shade if side == look.sun_side else 1.0  # facades with the sun behind them
        draw_wall(pix, z, z, cam.cam_y - dy[pix] * z / cam.focal, seg, lit, float(rng.uniform(0, 6.3)))
    # the row of buildings and trees across the far end of the street
    if street.far is not None:
        pix = np.flatnonzero(flat.depth > street.far_z)
        z = np.full(pix.size, street.far_z, np.float32)
        draw_wall(pix, z, dx[pix] * z / cam.focal, cam.cam_y - dy[pix] * z / cam.focal, street.far, 1.0, 1.0)
    return Canvas(rgb, label, depth)


def _shadows(rng: np.random.Generator, street: Street, look: Look, x: np.ndarray, z: np.ndarray
             ) -> np.ndarray:
    """Brightness of ground points: the sun-side buildings' shadow reaches across with a ragged edge."""
    if look.overcast:
        return np.ones_like(x)
    side = look.sun_side
    wall_line = street.front[0] if side < 0 else street.front[1]
    reach = rng.uniform(2, wall_line + 6)
    step = rng.uniform(0, 4) * (np.sin(z / rng.uniform(8, 30) * 2 * np.pi) > 0)
    return np.where(x * side > wall_line - reach - step, look.shade, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# cut-out objects: polygons in metres around a ground point, painted far to near

class Painter:
    """Draws polygons, given in metres around a ground point, into the image and the label alike."""

    def __init__(self, frame: Canvas, cam: Camera, look: Look, leaf: np.ndarray):
        self.frame, self.cam, self.look, self.leaf = frame, cam, look, leaf
        self.x = self.z = 0.0

    def at(self, x: float, z: float) -> "Painter":
        self.x, self.z = x, z
        return self

    def _pixels(self, pts_m: np.ndarray) -> np.ndarray:
        px, py = self.cam.project(self.x + pts_m[:, 0], self.z, pts_m[:, 1])
        return np.round(np.stack([px, py], 1) * 16).astype(np.int32)  # 4 fractional bits

    def _mask(self, polys: List[np.ndarray], ellipses: List[Tuple]) -> Tuple[slice, slice, np.ndarray]:
        """Pixels covered by the shapes and not hidden by a nearer background surface."""
        h, w = self.frame.label.shape
        pix = [self._pixels(p) for p in polys]
        boxes = pix + [self._pixels(np.array([[cx - a, cy - b], [cx + a, cy + b]], np.float32))
                       for cx, cy, a, b in ellipses]
        allp = np.concatenate(boxes) / 16.0
        x0, y0 = max(int(allp[:, 0].min()) - 1, 0), max(int(allp[:, 1].min()) - 1, 0)
        x1, y1 = min(int(allp[:, 0].max()) + 2, w), min(int(allp[:, 1].max()) + 2, h)
        if x1 <= x0 or y1 <= y0:
            return slice(0, 0), slice(0, 0), np.zeros((0, 0), bool)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0, y0], np.int32) * 16
        if pix:
            cv2.fillPoly(mask, [p - offset for p in pix], 1, lineType=cv2.LINE_8, shift=4)
        for corners in boxes[len(pix):]:
            centre = tuple(int(v) for v in ((corners[0] + corners[1]) // 2 - offset))
            axes = tuple(max(int(v) // 2, 1) for v in np.abs(corners[1] - corners[0]))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1, cv2.LINE_8, 4)
        rows, cols = slice(y0, y1), slice(x0, x1)
        return rows, cols, mask.astype(bool) & (self.frame.depth[rows, cols] >= self.z)

    def paint(self, label: int, colour: np.ndarray, polys: Sequence = (), ellipses: Sequence = (),
              texture: Optional[np.ndarray] = None) -> None:
        """Fill the union of polygons [[x, y], ...] and ellipses (cx, cy, ax, ay), all in metres."""
        rows, cols, mask = self._mask([np.asarray(p, np.float32) for p in polys], list(ellipses))
        if not mask.any():
            return
        colour = _haze(self.look, np.asarray(colour, np.float32), np.float32(self.z))
        region = self.frame.rgb[rows, cols]
        if texture is None:
            region[mask] = colour
        else:
            region[mask] = colour * (1 + texture[rows, cols][mask])[:, None]
        self.frame.label[rows, cols][mask] = label
        self.frame.depth[rows, cols][mask] = self.z

    def shadow(self, half_width: float, depth: float, strength: float) -> None:
        """Darken the ground under an object (label unchanged)."""
        rows, cols, mask = self._mask([], [(0.0, 0.0, half_width, depth)])
        if mask.any():
            self.frame.rgb[rows, cols][mask] *= strength


def _box(x0: float, x1: float, y0: float, y1: float) -> List[List[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _cut_box(x0: float, x1: float, y0: float, y1: float, cut: float) -> List[List[float]]:
    """A box with bevelled corners (car bodies)."""
    return [[x0 + cut, y0], [x1 - cut, y0], [x1, y0 + cut], [x1, y1 - cut],
            [x1 - cut, y1], [x0 + cut, y1], [x0, y1 - cut], [x0, y0 + cut]]


def draw_car(p: Painter, rng: np.random.Generator, facing_away: bool) -> None:
    width = rng.uniform(1.65, 1.95)
    tall = rng.uniform(1.0, 1.3)  # hatchback .. van
    hw = width / 2
    paint = _pick(rng, SHARED_PAINT, 0.15)
    dark = np.float32([28, 28, 30])
    p.shadow(hw * 1.1, 0.35, 0.45)
    for s in (-1, 1):
        p.paint(CAR, dark, [_box(s * (hw - 0.05), s * (hw - 0.3), 0.0, 0.45)])
    body_top = 0.95 * tall
    p.paint(CAR, paint, [_cut_box(-hw, hw, 0.18, body_top, 0.1)])
    p.paint(CAR, paint * 0.8, [[[-hw + 0.1, body_top], [hw - 0.1, body_top],
                                [hw - 0.32, 1.45 * tall], [-hw + 0.32, 1.45 * tall]]])
    glass = np.float32([45, 55, 70]) * rng.uniform(0.7, 1.4)
    p.paint(CAR, glass, [[[-hw + 0.2, body_top + 0.04], [hw - 0.2, body_top + 0.04],
                          [hw - 0.38, 1.4 * tall], [-hw + 0.38, 1.4 * tall]]])
    p.paint(CAR, paint * 0.6, [_box(-hw, hw, 0.18, 0.34)])
    lamp = np.float32([190, 30, 30]) if facing_away else np.float32([235, 230, 200])
    for s in (-1, 1):
        p.paint(CAR, lamp, [_box(s * (hw - 0.05), s * (hw - 0.35), 0.66 * tall, 0.8 * tall)])
    p.paint(CAR, np.float32([225, 225, 215]), [_box(-0.26, 0.26, 0.4, 0.52)])


def draw_person(p: Painter, rng: np.random.Generator) -> None:
    k = rng.uniform(1.55, 1.92) / 1.75
    top = _pick(rng, SHARED_PAINT, 0.2)
    legs = _pick(rng, SHARED_PAINT[[2, 3, 7, 13, 14]], 0.2)
    skin = np.float32([rng.uniform(120, 230)] * 3) * np.float32([1.0, 0.78, 0.62])
    stride = rng.uniform(0.0, 0.18) * k
    for s in (-1, 1):
        foot = s * (0.07 * k + stride)
        p.paint(PERSON, legs, [[[foot - 0.075 * k, 0.0], [foot + 0.075 * k, 0.0],
                                [s * 0.03 * k + 0.08 * k, 0.88 * k], [s * 0.03 * k - 0.08 * k, 0.88 * k]]])
        p.paint(PERSON, top * 0.9, [[[s * 0.2 * k, 1.42 * k], [s * 0.27 * k, 1.4 * k],
                                     [s * 0.27 * k, 0.85 * k], [s * 0.2 * k, 0.85 * k]]])
    p.paint(PERSON, top, [[[-0.2 * k, 0.82 * k], [0.2 * k, 0.82 * k], [0.23 * k, 1.45 * k], [-0.23 * k, 1.45 * k]]])
    p.paint(PERSON, skin, [_box(-0.05 * k, 0.05 * k, 1.42 * k, 1.52 * k)],
            [(0.0, 1.62 * k, 0.11 * k, 0.13 * k)])
    hair = np.float32([rng.uniform(20, 140)] * 3) * np.float32([1.0, 0.85, 0.7])
    p.paint(PERSON, hair, ellipses=[(0.0, 1.7 * k, 0.11 * k, 0.07 * k)])


def draw_tree(p: Painter, rng: np.random.Generator, colour: np.ndarray) -> None:
    trunk_h = rng.uniform(1.8, 3.5)
    radius = rng.uniform(1.4, 3.2)
    trunk = _pick(rng, SHARED_PAINT[[13, 6, 2]], 0.15)  # bark as brown/grey as poles and walls
    half = rng.uniform(0.12, 0.22)
    p.paint(VEGETATION, trunk, [_box(-half, half, 0.0, trunk_h + radius * 0.5)])
    blobs = [(0.0, trunk_h + radius, radius, radius * rng.uniform(0.8, 1.1))]
    for _ in range(int(rng.integers(3, 6))):
        a = rng.uniform(0, 2 * np.pi)
        r = radius * rng.uniform(0.4, 0.7)
        blobs.append((np.cos(a) * radius * 0.7, trunk_h + radius + np.sin(a) * radius * 0.6, r, r))
    p.paint(VEGETATION, colour * rng.uniform(0.8, 1.1), ellipses=blobs, texture=p.leaf * 0.4)


def draw_pole(p: Painter, rng: np.random.Generator, half_width: float) -> None:
    height = rng.uniform(3.5, 8.0)
    p.paint(POLE, _pick(rng, POLE_PAINT, 0.1), [_box(-half_width, half_width, 0.0, height)])
    if rng.random() < 0.7:
        draw_sign(p, rng, rng.uniform(2.2, min(3.2, height - 0.4)))


def draw_sign(p: Painter, rng: np.random.Generator, y: float) -> None:
    size = rng.uniform(0.75, 1.1)
    r = size / 2
    style = int(rng.integers(4))
    rim = np.float32([185, 35, 35]) if style < 2 else np.float32([235, 235, 230])
    face = [np.float32([235, 235, 230]), np.float32([40, 80, 170]), np.float32([40, 80, 170]),
            np.float32([235, 200, 50])][style]
    c = y + r
    if style == 0:  # warning triangle
        p.paint(TRAFFIC_SIGN, rim, [[[-r, c - r * 0.8], [r, c - r * 0.8], [0, c + r]]])
        p.paint(TRAFFIC_SIGN, face, [[[-r * 0.6, c - r * 0.58], [r * 0.6, c - r * 0.58], [0, c + r * 0.55]]])
    elif style == 1:  # round prohibition
        p.paint(TRAFFIC_SIGN, rim, ellipses=[(0, c, r, r)])
        p.paint(TRAFFIC_SIGN, face, ellipses=[(0, c, r * 0.72, r * 0.72)])
    elif style == 2:  # blue information rectangle
        p.paint(TRAFFIC_SIGN, rim, [_box(-r, r, c - r * 0.8, c + r * 0.8)])
        p.paint(TRAFFIC_SIGN, face, [_box(-r * 0.85, r * 0.85, c - r * 0.65, c + r * 0.65)])
    else:  # priority diamond
        p.paint(TRAFFIC_SIGN, rim, [[[0, c - r], [r, c], [0, c + r], [-r, c]]])
        p.paint(TRAFFIC_SIGN, face, [[[0, c - r * 0.65], [r * 0.65, c], [0, c + r * 0.65], [-r * 0.65, c]]])


def _spaced(rng: np.random.Generator, start: Tuple[float, float], gap: Tuple[float, float],
            stop: float) -> List[float]:
    z, out = rng.uniform(*start), []
    while z < stop:
        out.append(float(z))
        z += rng.uniform(*gap)
    return out


def place_objects(rng: np.random.Generator, cam: Camera, street: Street
                  ) -> List[Tuple[float, float, Callable[[Painter], None]]]:
    """(x, z, draw) for everything standing on the ground."""
    objects = []
    min_px = 5.0 * cam.width / 512  # poles at least ~5 px wide at 512 columns
    b = street.bands
    # (side, kerb, sidewalk inner edge, sidewalk outer edge, wall line)
    sides = ((-1, b[2], b[1], b[0], -street.front[0]), (1, b[3], b[4], b[5], street.front[1]))
    for side, kerb, walk_in, walk_out, wall_line in sides:
        verge = abs(walk_in - kerb)
        # parked cars along the kerb
        if rng.random() < 0.5:
            for z in _spaced(rng, (6, 20), (5, 9), rng.uniform(25, 60)):
                objects.append((kerb - side * 1.1, z, lambda p, r=rng: draw_car(p, r, True)))
        # poles at the kerb, most with a sign (near enough to stay several pixels wide)
        half = rng.uniform(0.15, 0.22)
        x = walk_in + side * 0.45
        near = max(5.0, cam.first_visible(x))
        for z in _spaced(rng, (near, near + 8), (10, 20), min(2 * half * cam.focal / min_px, 28)):
            objects.append((x, z, lambda p, r=rng, hw=half: draw_pole(p, r, hw)))
        # trees on the verge or the lawn, or on a wide sidewalk
        lawn = abs(wall_line - walk_out)
        spots = []
        if verge > 0.8:
            spots.append(kerb + side * verge / 2)
        if lawn > 1.5:
            spots.append(walk_out + side * lawn / 2)
        if not spots and abs(walk_out - walk_in) > 3.5 and rng.random() < 0.5:
            spots.append(walk_out - side * 0.8)
        if spots and rng.random() < 0.8:
            colour = _green(rng)
            for z in _spaced(rng, (5, 15), (7, 14), 70):
                objects.append((float(rng.choice(spots)), z, lambda p, r=rng, c=colour: draw_tree(p, r, c)))
        # people on the sidewalk, in the picture and near enough to be tall
        for _ in range(int(rng.integers(0, 5))):
            x = float(rng.uniform(min(walk_in, walk_out) + 0.3, max(walk_in, walk_out) - 0.3))
            near = max(4.0, cam.first_visible(x) * 1.1)
            objects.append((x, float(rng.uniform(near, near + 12)), lambda p, r=rng: draw_person(p, r)))
    # traffic in the lanes: same direction right of the camera's lane edge, oncoming left of it
    used = []
    for _ in range(int(rng.integers(0, 6))):
        lane = int(rng.integers(street.lanes))
        x = -street.road_left + 1.6 + 3.2 * lane + rng.uniform(-0.3, 0.3)
        z = float(rng.uniform(7, 70))
        if any(abs(x - ux) < 2 and abs(z - uz) < 8 for ux, uz in used):
            continue
        used.append((x, z))
        objects.append((x, z, lambda p, r=rng, away=x > -1.6: draw_car(p, r, away)))
    return objects


# ---------------------------------------------------------------------------------------------
# the ego car's bonnet, the rectification border, lighting and the camera's own faults

def _hood_and_border(rng: np.random.Generator, frame: Canvas) -> None:
    h, w = frame.label.shape
    if rng.random() < 0.75:
        mask = np.zeros((h, w), np.uint8)
        depth_rows = rng.uniform(0.06, 0.12) * h
        centre = (int(w / 2 + rng.uniform(-0.1, 0.1) * w), int(h + depth_rows * 0.3))
        cv2.ellipse(mask, centre, (int(w * rng.uniform(0.6, 0.9)), int(depth_rows * 1.3)), 0, 0, 360, 1, -1)
        hood = mask.astype(bool)
        paint = _pick(rng, SHARED_PAINT, 0.1)
        rows = np.linspace(0.7, 1.1, h, dtype=np.float32)[:, None, None]
        frame.rgb[hood] = (paint * rows * np.ones((1, w, 1), np.float32))[hood]
        frame.label[hood] = EGO
    if rng.random() < 0.25:
        b = int(rng.integers(2, 5))
        for cols in (slice(0, b), slice(w - b, w)):
            frame.rgb[:, cols] = 0
            frame.label[:, cols] = BORDER


def _camera_effects(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    rgb = rgb * gain
    mean = rgb.mean()
    rgb = mean + (rgb - mean) * rng.uniform(0.75, 1.2)
    rgb = 255.0 * np.power(np.clip(rgb, 0, 255) / 255.0, rng.uniform(0.8, 1.25))
    yy, xx = np.mgrid[-1:1:complex(h), -1:1:complex(w)]
    rgb = rgb * (1 - rng.uniform(0, 0.3) * (xx ** 2 + yy ** 2) / 2)[..., None].astype(np.float32)
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), rng.uniform(0.3, 0.9))
    rgb = rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * rng.uniform(1.5, 6.0)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def choose_camera(rng: np.random.Generator, size: Tuple[int, int]) -> Camera:
    h, w = size
    return Camera(h, w, focal=float(1.1 * w * rng.uniform(0.9, 1.1)), cam_y=float(rng.uniform(1.2, 1.6)),
                  horizon=float(h * rng.uniform(0.36, 0.5)), vanish_x=float(w * rng.uniform(0.38, 0.62)))


def render(seed: int, split: str, index: int, size: Tuple[int, int] = DEFAULT_SIZE
           ) -> Tuple[np.ndarray, np.ndarray]:
    """One frame: (HxWx3 uint8 BGR image, HxW uint8 Cityscapes labelIds)."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    cam = choose_camera(rng, size)
    street = choose_street(rng)
    look = choose_look(rng)
    frame = render_background(rng, cam, street, look)
    leaf = np.clip(smooth_noise(rng, size, 2.5) * 0.8 + smooth_noise(rng, size, 7) * 0.5, -1, 1)
    painter = Painter(frame, cam, look, leaf)
    for x, z, draw in sorted(place_objects(rng, cam, street), key=lambda o: -o[1]):
        draw(painter.at(x, z))
    _hood_and_border(rng, frame)
    rgb = _camera_effects(rng, frame.rgb)
    return np.ascontiguousarray(rgb[..., ::-1]), frame.label
