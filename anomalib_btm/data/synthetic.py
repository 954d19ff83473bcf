# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic RGB + organized point cloud data in the MVTec 3D-AD layout.

The generator renders an object (by default bagel-like) lying on a slightly tilted background plane, seen from above
by a pinhole camera about 0.55 m away, the way a structured-light sensor (camera plus an offset projector) would
capture it:

* ``xyz/NNN.tiff``: H×W×3 float32 organized point cloud in metres, pixel-aligned with the RGB image. Invalid points are
  exactly ``(0, 0, 0)``: steep flanks whose normal is nearly perpendicular to the camera ray or to the projector ray,
  projector shadows behind the object, and a few random small dropouts. Gaussian noise (0.15 mm) acts along the ray.
* ``rgb/NNN.png``: 8-bit RGB. Albedo with smooth procedural texture, Lambert shading from the surface normal lit by the
  projector, shadows, fill light and a little pixel noise.
* ``gt/NNN.png`` (test only): 8-bit mask, 255 on the defect region, 0 elsewhere (all zero for ``good``).

Good samples vary in pose (translation, rotation about the plane normal), size (±7 %), shape (ellipticity, height,
gentle surface undulation), plane distance and tilt, colour and texture. Defects:

* ``dent`` / ``bump``: smooth local depression / protrusion, radius 5–7.5 mm, 2.5–4 mm deep / high.
* ``crack``: a narrow, slightly wavy groove, 14–20 mm long, about 3.5 mm wide, 3–4 mm deep, darker in RGB.
* ``hole``: a deep steep-walled pit (radius 4.5–6.5 mm, 8–11 mm deep) whose walls drop out of the cloud, dark in RGB.
* ``color``: a stain that changes only the RGB image; the geometry is drawn exactly like a good sample.

Shapes (``shape=``, :data:`SHAPES`), all height fields over the plane, with the same pose, size and colour variation:

* ``bagel`` (default): a torus-like ring, 74 mm across and about 18 mm high, with rounded flanks.
* ``ring45``, ``ring60``, ``ring80``: a flat-topped annulus 12 mm high whose straight inner and outer walls rise at 45,
  60 or 80 degrees (wall radii 15 and 33 mm at mid-height, ellipticity up to 4 % without changing the wall slope).
  The 45° and 60° walls stay in the cloud; an 80° wall mostly drops out (about 18 % of the inner and 1 % of the
  outer wall points remain), as its normal is nearly perpendicular to the rays.
* ``dome``: a spherical cap, 70 mm across and 20 mm high, about 60 degrees steep at its rim.
* ``box``: a 35 × 50 × 15 mm box resting on one long edge, the other lifted by 20–30 degrees: a tilted top face, a
  steep (60–70 degrees) face below the lifted edge, and vertical drops (silhouettes, no points) to the plane.

Defects land on the visible surface: the top of the bagel or ring (and, for the 45° and 60° rings, sometimes half-way up
the outer wall), anywhere on the dome's upper part, and on the box's top face or across its lifted edge.

Everything is vectorised with numpy (ray marching of the height field for all pixels at once), so generating a
category takes seconds, not minutes. Images are square (``image_size=224``) or ``(height, width)``
(``image_size=(240, 320)``); the shorter side always covers 0.11 m of the background plane. Every sample has its own
random stream derived from ``(seed, split, label, index)`` (see :func:`sample_seed`), so a sample does not depend on
how many others are generated, and a ``color`` sample has exactly the point cloud of the good sample with the same
seed (and shape).

``calibration/camera_parameters.json`` holds the pinhole intrinsics ``fx``, ``fy``, ``cx``, ``cy`` (pixels) and
``image_width``, ``image_height``: ``x = fx * X / Z + cx``, ``y = fy * Y / Z + cy`` for a point ``(X, Y, Z)`` in metres.
``synthetic_info.json`` records the generator's arguments; ``shape`` and ``image_height`` / ``image_width`` appear only
for a shape other than ``bagel`` or a ``(height, width)`` size (``image_size`` is then ``[height, width]``), so the
default category is byte-identical to that of earlier versions.

Example:
    >>> from anomalib_btm.data import generate_category
    >>> path = generate_category("./datasets/synthetic3d", category="bagel_synth", image_size=224)  # doctest: +SKIP

Command line::

    python -m anomalib_btm.data.synthetic ./datasets/synthetic3d --category bagel_synth --image-size 224
    python -m anomalib_btm.data.synthetic ./datasets/synthetic3d --category ring60 --shape ring60 --image-size 240 320
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from anomalib_btm.cli import ArgumentParser, UsageError, run, signature_defaults

__all__ = [
    "DEFECT_TYPES",
    "GEOMETRIC_DEFECTS",
    "SHAPES",
    "CameraIntrinsics",
    "RenderedSample",
    "camera_intrinsics",
    "generate_category",
    "main",
    "render_sample",
    "sample_seed",
]

DEFECT_TYPES: tuple[str, ...] = ("dent", "bump", "crack", "hole", "color")
"""All defect types the generator knows, in a fixed order (the order also fixes each type's random stream)."""

GEOMETRIC_DEFECTS: tuple[str, ...] = ("dent", "bump", "crack", "hole")
"""Defect types that change the point cloud; ``color`` changes the RGB image only."""

SHAPES: tuple[str, ...] = ("bagel", "ring45", "ring60", "ring80", "dome", "box")
"""Object shapes the generator knows (see :func:`generate_category`); ``bagel`` is the default."""

MIN_IMAGE_SIZE = 32

# Scene constants (metres).
_WORKING_DISTANCE = 0.55  # camera to background plane along the optical axis
_FIELD_OF_VIEW = 0.11  # width of the imaged area on the background plane
_PROJECTOR = np.array([0.10, 0.0, 0.0])  # structured-light projector, offset from the camera centre
_RING_RADIUS = 0.024  # bagel: distance of the tube centre from the object centre
_TUBE_RADIUS = 0.013  # bagel: tube radius (the footprint is 74 mm across)
_NOISE_STD = 1.5e-4  # sensor noise along the ray
_MARCH_STEPS = 10  # ray-marching samples through the height slab
_REFINE_STEPS = 4  # regula falsi iterations after bracketing
_SHADOW_STEPS = 8
# The other shapes have sharp edges, steep walls and height jumps: more samples, and hits whose height residual stays
# above _RESIDUAL_TOL (a ray that meets a height jump, i.e. a vertical face) are dropped from the cloud.
_MARCH_STEPS_SHARP = 32
_REFINE_STEPS_SHARP = 12
_SHADOW_STEPS_SHARP = 16
_RESIDUAL_TOL = 5e-5
_CLIP_STEPS = 32  # fine samples within a march interval where a ray may clip a sharp edge
# ringNN: straight-walled annulus; the radii are those of the walls at mid-height, the walls rise at NN degrees.
_RING_INNER = 0.015
_RING_OUTER = 0.033
_RING_HEIGHT = 0.012
# dome: spherical cap (the flanks are about 60 degrees steep at the base).
_DOME_RADIUS = 0.035
_DOME_HEIGHT = 0.020
# box: width (across the tilt axis), length (along it), thickness; tilted about its long axis, one long edge lifted.
_BOX_SIZE = (0.035, 0.050, 0.015)
_BOX_TILT = (20.0, 30.0)  # degrees
_BASE_COLORS = {
    "bagel": (0.72, 0.50, 0.28),
    "ring": (0.56, 0.60, 0.66),
    "dome": (0.80, 0.74, 0.60),
    "box": (0.68, 0.54, 0.38),
}
_COS_KEEP = 0.32  # points whose normal makes a cosine above this with both rays are always kept
_COS_DROP = 0.12  # ... and below this are always dropped (linear dropout probability in between)

_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the synthetic camera, in pixels.

    Attributes:
        fx: Focal length along x.
        fy: Focal length along y.
        cx: Principal point x (deliberately not on a pixel centre, so no valid point has an exact zero coordinate).
        cy: Principal point y.
        width: Image width.
        height: Image height.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the intrinsics as a JSON-serialisable dictionary."""
        return {
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "image_width": self.width,
            "image_height": self.height,
        }


@dataclass(frozen=True)
class RenderedSample:
    """One rendered sample.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 image.
        xyz: ``(H, W, 3)`` float32 organized point cloud in metres; invalid points are exactly zero.
        mask: ``(H, W)`` uint8 ground-truth mask, 255 on the defect, 0 elsewhere.
    """

    rgb: np.ndarray
    xyz: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class _Shape:
    """Object shape and pose (object-local coordinates are metres before scaling)."""

    center: tuple[float, float]  # object centre in plane coordinates
    angle: float  # rotation about the plane normal
    scale: float
    ellipticity: float
    height_factor: float  # tube height / tube radius
    wave_vectors: np.ndarray  # (K, 2) float32 surface undulation
    wave_phases: np.ndarray  # (K,) float32
    wave_amplitude: float  # relative height undulation per component
    tex_vectors: np.ndarray  # (K, 2) albedo texture
    tex_phases: np.ndarray  # (K,)
    base_color: np.ndarray  # (3,)
    kind: str = "bagel"  # "bagel", "ring", "dome" or "box"
    dims: tuple[float, ...] = ()  # ring: inner, outer, height, tan(wall angle); dome: radius, height; box: see _box


@dataclass(frozen=True)
class _Defect:
    """Defect parameters in object-local coordinates."""

    kind: str
    center: tuple[float, float]
    radius: float = 0.0
    depth: float = 0.0  # signed displacement amplitude (negative = into the object)
    angle: float = 0.0  # crack orientation
    length: float = 0.0  # crack length
    wiggle: tuple[float, float, float] = (0.0, 1.0, 0.0)  # crack: amplitude, wavelength, phase
    lobes: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # stain outline: a3, phase3, a5, phase5
    color: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass(frozen=True)
class _Scene:
    """Everything random about one sample."""

    plane_normal: np.ndarray  # (3,) unit, pointing toward the camera
    plane_point: np.ndarray  # (3,) where the optical axis meets the plane
    basis_u: np.ndarray  # (3,) in-plane axes
    basis_v: np.ndarray
    plane_albedo: float
    plane_tex: np.ndarray  # (3, 3): wave vector x, wave vector y, phase
    shape: _Shape
    defect: _Defect | None


def camera_intrinsics(image_size: int | tuple[int, int]) -> CameraIntrinsics:
    """Intrinsics of the synthetic camera.

    The shorter image side covers 0.11 m at the 0.55 m working distance whatever the resolution, so the object is fully
    in view at every ``image_size``; only the sampling changes (a wider image sees more of the background plane).

    Args:
        image_size: Width and height of a square image in pixels, or ``(height, width)``.

    Returns:
        The camera intrinsics.

    Raises:
        ValueError: If ``image_size`` is not an integer or a pair of integers of at least 32.
    """
    height, width = _check_image_size(image_size)
    focal = min(height, width) * _WORKING_DISTANCE / _FIELD_OF_VIEW
    return CameraIntrinsics(
        fx=focal,
        fy=focal,
        cx=width / 2 - 0.2,
        cy=height / 2 + 0.15,
        width=width,
        height=height,
    )


# --------------------------------------------------------------------------------------------------------------------
# Object geometry (object-local coordinates, unscaled, metres)
# --------------------------------------------------------------------------------------------------------------------


def _undulation(shape: _Shape, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Sum of the shape's surface waves (without the amplitude)."""
    waves = np.zeros(np.broadcast_shapes(np.shape(px), np.shape(py)), dtype=np.result_type(px, py))
    for (kx, ky), phase in zip(shape.wave_vectors, shape.wave_phases, strict=True):
        waves += np.sin(px * kx + py * ky + phase)
    return waves


def _ring_coordinate(shape: _Shape, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Ring shapes: radial distance, corrected for the ring's slight ellipticity (exactly radial slope 1)."""
    inner, outer = shape.dims[0], shape.dims[1]
    rho2 = px * px + py * py
    cos_2phi = (px * px - py * py) / (rho2 + np.float32(1e-12))
    return np.sqrt(rho2) - np.float32((shape.ellipticity - 1.0) * (inner + outer) / 2) * cos_2phi


def _box(shape: _Shape) -> tuple[float, float, float, float, float, float]:
    """Box: width, length, thickness, cos and sin of the tilt, and the x offset of the footprint centre.

    In the tilt frame (``x = px + offset``) the box rests on its lower long edge at ``x = 0`` and the opposite long edge
    is lifted; seen from above the top face spans ``-T sin < x < W cos - T sin`` and the steep end face (at 90° minus
    the tilt) spans ``W cos - T sin < x < W cos``, where it ends in a vertical drop to the plane.
    """
    width, length, thickness, tilt = shape.dims
    cos_t, sin_t = math.cos(tilt), math.sin(tilt)
    return width, length, thickness, cos_t, sin_t, (width * cos_t - thickness * sin_t) / 2


def _base_height(shape: _Shape, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Height of the defect-free object above the plane (zero outside its footprint)."""
    if shape.kind == "ring":
        inner, outer, height, tan_wall = shape.dims
        run = height / tan_wall  # horizontal extent of a wall
        q = _ring_coordinate(shape, px, py)
        rise = np.minimum(q - np.float32(inner - run / 2), np.float32(outer + run / 2) - q) * np.float32(tan_wall)
        profile = np.clip(rise, 0.0, np.float32(height))
        return profile * (1.0 + np.float32(shape.wave_amplitude) * _undulation(shape, px, py))
    if shape.kind == "dome":
        radius, height = shape.dims
        sphere = (radius * radius + height * height) / (2 * height)
        rho2 = (px / np.float32(shape.ellipticity)) ** 2 + (py * np.float32(shape.ellipticity)) ** 2
        cap = np.clip(
            np.sqrt(np.clip(np.float32(sphere * sphere) - rho2, 0.0, None)) - np.float32(sphere - height), 0, None
        )
        return cap * (1.0 + np.float32(shape.wave_amplitude) * _undulation(shape, px, py))
    if shape.kind == "box":
        width, length, thickness, cos_t, sin_t, offset = _box(shape)
        x = px + np.float32(offset)
        top_face = np.float32(thickness * cos_t) + (x + np.float32(thickness * sin_t)) * np.float32(sin_t / cos_t)
        end_face = np.float32(width * sin_t + thickness * cos_t) - (
            x - np.float32(width * cos_t - thickness * sin_t)
        ) * np.float32(cos_t / sin_t)
        inside = (x > -thickness * sin_t) & (x < width * cos_t) & (np.abs(py) < length / 2)
        return np.where(inside, np.minimum(top_face, end_face), np.float32(0.0))
    rho = np.sqrt((px / shape.ellipticity) ** 2 + (py * shape.ellipticity) ** 2)
    t = (rho - _RING_RADIUS) / _TUBE_RADIUS
    profile = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
    waves = np.zeros_like(profile)
    for (kx, ky), phase in zip(shape.wave_vectors, shape.wave_phases, strict=True):
        waves += np.sin(px * kx + py * ky + phase)
    return (shape.height_factor * _TUBE_RADIUS) * profile * (1.0 + shape.wave_amplitude * waves)


def _crack_coords(defect: _Defect, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crack frame: position along the crack, signed distance across it, and the taper (0 at the ends, 1 mid-way)."""
    dx, dy = px - defect.center[0], py - defect.center[1]
    cos_a, sin_a = math.cos(defect.angle), math.sin(defect.angle)
    along = dx * cos_a + dy * sin_a
    across = -dx * sin_a + dy * cos_a
    amplitude, wavelength, phase = defect.wiggle
    across = across - amplitude * np.sin(2 * np.pi * along / wavelength + phase)
    taper = np.sqrt(np.clip(np.cos(np.pi * along / defect.length), 0.0, None))
    taper = np.where(np.abs(along) < defect.length / 2, taper, 0.0)
    return along, across, taper


def _stain_radius(defect: _Defect, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Distance from the stain centre divided by the (direction-dependent) stain radius."""
    phi = np.arctan2(dy, dx)
    a3, p3, a5, p5 = defect.lobes
    outline = defect.radius * (1.0 + a3 * np.sin(3 * phi + p3) + a5 * np.sin(5 * phi + p5))
    return np.hypot(dx, dy) / outline


def _defect_reach(defect: _Defect) -> float:
    """Radius around the defect centre outside which the displacement is zero."""
    if defect.kind == "crack":
        return defect.length / 2 + defect.radius + defect.wiggle[0]
    return defect.radius


def _displacement_near(defect: _Defect, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Height change caused by a geometric defect, for points near it."""
    if defect.kind == "crack":
        _, across, taper = _crack_coords(defect, px, py)
        return defect.depth * taper * np.clip(1.0 - np.abs(across) / defect.radius, 0.0, None) ** 1.5
    r = np.clip(np.hypot(px - defect.center[0], py - defect.center[1]) / defect.radius, 0.0, 1.0)
    if defect.kind == "hole":
        return defect.depth * (1.0 - r**6)
    return defect.depth * 0.5 * (1.0 + np.cos(np.pi * r))


def _displacement(defect: _Defect | None, px: np.ndarray, py: np.ndarray) -> np.ndarray | None:
    """Height change caused by a geometric defect (``None`` when the defect does not change the geometry).

    Only the points within the defect's reach are evaluated, which keeps ray marching cheap.
    """
    if defect is None or defect.kind not in GEOMETRIC_DEFECTS:
        return None
    reach = _defect_reach(defect)
    dx, dy = px - defect.center[0], py - defect.center[1]
    near = np.flatnonzero(dx * dx + dy * dy < reach * reach)
    disp = np.zeros(px.shape, dtype=px.dtype)
    if near.size:
        disp.flat[near] = _displacement_near(defect, px.flat[near], py.flat[near])
    return disp


def _height(shape: _Shape, defect: _Defect | None, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Object height above the plane including the defect (object-local, unscaled)."""
    base = _base_height(shape, px, py)
    disp = _displacement(defect, px, py)
    if disp is None:
        return base
    return np.where(base > 0, np.clip(base + disp, 0.0, None), 0.0)


def _defect_region(defect: _Defect | None, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Boolean ground-truth region of the defect in object-local coordinates."""
    if defect is None:
        return np.zeros(px.shape, dtype=bool)
    if defect.kind == "crack":
        along, across, _ = _crack_coords(defect, px, py)
        return (np.abs(along) < 0.47 * defect.length) & (np.abs(across) < defect.radius + 4e-4)
    if defect.kind == "color":
        return _stain_radius(defect, px - defect.center[0], py - defect.center[1]) < 1.0
    r = np.hypot(px - defect.center[0], py - defect.center[1]) / defect.radius
    return r < (1.0 if defect.kind == "hole" else 0.85)


def _nominal_height(shape: _Shape) -> float:
    """Height of the defect-free object without surface waves (object-local, unscaled)."""
    if shape.kind == "ring":
        return shape.dims[2]
    if shape.kind == "dome":
        return shape.dims[1]
    if shape.kind == "box":
        width, _, thickness, cos_t, sin_t, _ = _box(shape)
        return width * sin_t + thickness * cos_t
    return shape.height_factor * _TUBE_RADIUS


def _footprint_radius(shape: _Shape) -> float:
    """Radius around the object centre outside which the defect-free object has zero height (unscaled)."""
    if shape.kind == "ring":
        inner, outer, height, tan_wall = shape.dims
        return outer + height / tan_wall / 2 + (shape.ellipticity - 1.0) * (inner + outer) / 2
    if shape.kind == "dome":
        return shape.dims[0] * shape.ellipticity
    if shape.kind == "box":
        width, length, thickness, cos_t, sin_t, _ = _box(shape)
        return math.hypot((width * cos_t + thickness * sin_t) / 2, length / 2)
    return (_RING_RADIUS + _TUBE_RADIUS) * shape.ellipticity


def _max_height(shape: _Shape, defect: _Defect | None) -> float:
    """Upper bound of the object height in world units (metres, scaled)."""
    top = _nominal_height(shape) * (1.0 + shape.wave_amplitude * len(shape.wave_phases))
    if defect is not None and defect.kind == "bump":
        top += defect.depth
    return shape.scale * top + 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Random scene
# --------------------------------------------------------------------------------------------------------------------


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _random_waves(rng: np.random.Generator, count: int, wavelengths: tuple[float, float]) -> np.ndarray:
    """Random 2-D wave vectors with wavelengths in the given range, as a ``(count, 2)`` array."""
    lengths = rng.uniform(*wavelengths, size=count)
    directions = rng.uniform(0.0, 2 * np.pi, size=count)
    return np.stack([np.cos(directions), np.sin(directions)], axis=1) * (2 * np.pi / lengths)[:, None]


def _defect_site(rng: np.random.Generator, shape: _Shape) -> tuple[tuple[float, float], float]:
    """Defect centre (object-local) and a reference direction for shapes other than the bagel.

    Ring: on the flat top, or (35 %, walls of at most 60°) half-way up the outer wall. Dome: anywhere within 70 % of
    the base radius. Box: on the top face, or (25 %) on its lifted edge, so that the defect also covers the steep face.
    """
    phi = rng.uniform(0.0, 2 * np.pi)
    if shape.kind == "ring":
        inner, outer, height, tan_wall = shape.dims
        if tan_wall < 2.0 and rng.random() < 0.35:
            q = outer
        else:
            run = height / tan_wall
            top_in, top_out = inner + run / 2, outer - run / 2
            q = (top_in + top_out) / 2 + rng.uniform(-0.2, 0.2) * (top_out - top_in)
        rho = q + (shape.ellipticity - 1.0) * (inner + outer) / 2 * math.cos(2 * phi)
        return (rho * math.cos(phi), rho * math.sin(phi)), phi
    if shape.kind == "dome":
        rho = 0.7 * shape.dims[0] * math.sqrt(rng.random())
        return (rho * math.cos(phi), rho * math.sin(phi)), phi
    if shape.kind == "box":
        width, length, thickness, cos_t, sin_t, offset = _box(shape)
        lifted_edge = rng.random() < 0.25
        x = (
            width * cos_t - thickness * sin_t
            if lifted_edge
            else -thickness * sin_t + rng.uniform(0.3, 0.7) * width * cos_t
        )
        return (x - offset, rng.uniform(-0.3, 0.3) * length), phi
    msg = f"Unknown shape kind {shape.kind!r}."
    raise ValueError(msg)


def _sample_defect(rng: np.random.Generator, kind: str, shape: _Shape) -> _Defect:
    """Draw a defect on the object's visible surface (bagel: the top of the ring, where the camera sees it well)."""
    if shape.kind == "bagel":
        phi = rng.uniform(0.0, 2 * np.pi)
        rho = _RING_RADIUS + rng.uniform(-0.3, 0.3) * _TUBE_RADIUS
        center = (rho * math.cos(phi) * shape.ellipticity, rho * math.sin(phi) / shape.ellipticity)
    else:
        center, phi = _defect_site(rng, shape)
    if kind in ("dent", "bump"):
        depth = rng.uniform(2.5e-3, 4.0e-3)
        return _Defect(kind, center, radius=rng.uniform(5.0e-3, 7.5e-3), depth=-depth if kind == "dent" else depth)
    if kind == "hole":
        return _Defect(kind, center, radius=rng.uniform(4.5e-3, 6.5e-3), depth=-rng.uniform(8.0e-3, 11.0e-3))
    if kind == "crack":
        return _Defect(
            kind,
            center,
            radius=rng.uniform(1.6e-3, 2.0e-3),  # half-width
            depth=-rng.uniform(3.0e-3, 4.0e-3),
            angle=phi + rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.5 else 0.0),
            length=rng.uniform(14e-3, 20e-3),
            wiggle=(rng.uniform(0.3e-3, 1.0e-3), rng.uniform(6e-3, 12e-3), rng.uniform(0.0, 2 * np.pi)),
        )
    if kind == "color":
        palette = np.array([[0.22, 0.12, 0.06], [0.88, 0.86, 0.78], [0.30, 0.42, 0.20], [0.55, 0.16, 0.12]])
        return _Defect(
            kind,
            center,
            radius=rng.uniform(5.0e-3, 7.5e-3),
            lobes=(rng.uniform(0.0, 0.2), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.1), rng.uniform(0, 2 * np.pi)),
            color=palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.1, size=3),
        )
    msg = f"Unknown defect type {kind!r}."
    raise ValueError(msg)


def _sample_shape(rng: np.random.Generator, shape: str) -> _Shape:
    """Draw the pose, size, shape variation and appearance of an object other than the bagel."""
    kind = "ring" if shape.startswith("ring") else shape
    center = (rng.uniform(-5e-3, 5e-3), rng.uniform(-5e-3, 5e-3))
    angle = rng.uniform(0.0, 2 * np.pi)
    scale = rng.uniform(0.93, 1.07)
    if kind == "ring":
        ellipticity = rng.uniform(1.0, 1.04)
        dims: tuple[float, ...] = (
            _RING_INNER * rng.uniform(0.97, 1.03),
            _RING_OUTER * rng.uniform(0.98, 1.02),
            _RING_HEIGHT * rng.uniform(0.95, 1.05),
            math.tan(math.radians(float(shape[4:]))),
        )
    elif kind == "dome":
        ellipticity = rng.uniform(1.0, 1.05)
        dims = (_DOME_RADIUS * rng.uniform(0.97, 1.03), _DOME_HEIGHT * rng.uniform(0.95, 1.05))
    else:
        ellipticity = 1.0
        width, length, thickness = (size * rng.uniform(0.97, 1.03) for size in _BOX_SIZE)
        dims = (width, length, thickness, math.radians(rng.uniform(*_BOX_TILT)))
    return _Shape(
        center=center,
        angle=angle,
        scale=scale,
        ellipticity=ellipticity,
        height_factor=1.0,
        wave_vectors=_random_waves(rng, 3, (0.012, 0.025)).astype(np.float32),
        wave_phases=rng.uniform(0.0, 2 * np.pi, size=3).astype(np.float32),
        wave_amplitude=0.0 if kind == "box" else rng.uniform(0.004, 0.008),
        tex_vectors=_random_waves(rng, 4, (0.004, 0.015)),
        tex_phases=rng.uniform(0.0, 2 * np.pi, size=4),
        base_color=np.array(_BASE_COLORS[kind]) * rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, size=3),
        kind=kind,
        dims=dims,
    )


def _sample_scene(rng: np.random.Generator, defect: str | None, shape: str = "bagel") -> _Scene:
    """Draw the plane, the object's pose, shape and appearance, and the defect."""
    tilt = math.radians(rng.uniform(2.0, 4.0))
    azimuth = math.radians(rng.uniform(10.0, 50.0))
    normal = np.array([math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), -math.cos(tilt)])
    point = np.array([0.0, 0.0, _WORKING_DISTANCE + rng.uniform(-5e-3, 5e-3)])
    basis_u = _unit(np.array([1.0, 0.0, 0.0]) - normal[0] * normal)
    basis_v = np.cross(normal, basis_u)

    obj = (
        _sample_shape(rng, shape)
        if shape != "bagel"
        else _Shape(
            center=(rng.uniform(-5e-3, 5e-3), rng.uniform(-5e-3, 5e-3)),
            angle=rng.uniform(0.0, 2 * np.pi),
            scale=rng.uniform(0.93, 1.07),
            ellipticity=rng.uniform(1.0, 1.08),
            height_factor=rng.uniform(1.35, 1.45),
            wave_vectors=_random_waves(rng, 3, (0.012, 0.025)).astype(np.float32),
            wave_phases=rng.uniform(0.0, 2 * np.pi, size=3).astype(np.float32),
            wave_amplitude=rng.uniform(0.006, 0.012),
            tex_vectors=_random_waves(rng, 4, (0.004, 0.015)),
            tex_phases=rng.uniform(0.0, 2 * np.pi, size=4),
            base_color=np.array([0.72, 0.50, 0.28]) * rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, size=3),
        )
    )
    plane_tex = np.concatenate([_random_waves(rng, 3, (0.01, 0.04)), rng.uniform(0, 2 * np.pi, (3, 1))], axis=1)
    # The defect has its own stream, so that the rest of the scene is distributed exactly like a good sample.
    defect_rng = np.random.default_rng(rng.integers(2**63))
    return _Scene(
        plane_normal=normal,
        plane_point=point,
        basis_u=basis_u,
        basis_v=basis_v,
        plane_albedo=rng.uniform(0.14, 0.2),
        plane_tex=plane_tex,
        shape=obj,
        defect=None if defect is None else _sample_defect(defect_rng, defect, obj),
    )


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


class _Frame:
    """World (plane) coordinates to object-local coordinates and heights."""

    def __init__(self, scene: _Scene) -> None:
        self.scene = scene
        shape = scene.shape
        self.cos_t, self.sin_t = math.cos(shape.angle), math.sin(shape.angle)
        self.scale = shape.scale

    def local(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plane coordinates (metres) to object-local coordinates."""
        du = u - self.scene.shape.center[0]
        dv = v - self.scene.shape.center[1]
        return (self.cos_t * du + self.sin_t * dv) / self.scale, (-self.sin_t * du + self.cos_t * dv) / self.scale

    def height(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """World height above the plane at plane coordinates ``(u, v)``."""
        px, py = self.local(u, v)
        return self.scale * _height(self.scene.shape, self.scene.defect, px, py)

    def gradient(self, px: np.ndarray, py: np.ndarray, eps: float = 2e-5) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of the world height with respect to the plane coordinates, at object-local points."""
        shape, defect = self.scene.shape, self.scene.defect
        gx = (_height(shape, defect, px + eps, py) - _height(shape, defect, px - eps, py)) / (2 * eps)
        gy = (_height(shape, defect, px, py + eps) - _height(shape, defect, px, py - eps)) / (2 * eps)
        # World height = scale * H(R(-angle) (uv - c) / scale)  =>  grad_uv = R(angle) grad_local.
        return self.cos_t * gx - self.sin_t * gy, self.sin_t * gx + self.cos_t * gy


@functools.lru_cache(maxsize=8)
def _camera_rays(camera: CameraIntrinsics) -> np.ndarray:
    """Unnormalised, read-only rays ``((j - cx) / fx, (i - cy) / fy, 1)`` of all pixels, row-major, ``(H*W, 3)``."""
    jj, ii = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
    rays = np.stack([(jj - camera.cx) / camera.fx, (ii - camera.cy) / camera.fy, np.ones_like(jj)], -1).reshape(-1, 3)
    rays.flags.writeable = False
    return rays


def _dropout_probability(cosine: np.ndarray) -> np.ndarray:
    """Dropout probability from the cosine between the surface normal and a ray."""
    return np.clip((_COS_KEEP - cosine) / (_COS_KEEP - _COS_DROP), 0.0, 1.0)


def render_sample(
    image_size: int | tuple[int, int] = 224,
    defect: str | None = None,
    seed: int | Sequence[int] = 0,
    shape: str = "bagel",
) -> RenderedSample:
    """Render one sample in memory.

    Args:
        image_size: Width and height of a square image in pixels, or ``(height, width)`` (each at least 32).
        defect: ``None`` for a good sample, else one of :data:`DEFECT_TYPES`.
        seed: Seed (or seed sequence) of this sample's random stream.
        shape: Object shape, one of :data:`SHAPES`.

    Returns:
        The RGB image, organized point cloud and ground-truth mask.

    Raises:
        ValueError: If ``image_size`` is too small, or ``defect`` or ``shape`` is unknown.
    """
    camera = camera_intrinsics(image_size)
    if defect is not None and defect not in DEFECT_TYPES:
        msg = f"defect={defect!r} is not a known defect type; use None or one of {', '.join(DEFECT_TYPES)}."
        raise ValueError(msg)
    _check_shape(shape)
    rng = np.random.default_rng(seed)
    scene = _sample_scene(rng, defect, shape)
    return _render(scene, camera, rng)


def _catch_edge_clips(
    gap: Callable[[np.ndarray, np.ndarray], np.ndarray],
    levels: np.ndarray,
    gaps: np.ndarray,
    first: np.ndarray,
    bracket: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Find hits that fall between two march samples that are both above the surface (updates ``bracket`` in place).

    A ray that clips a sharp edge (it enters the top face just before the edge and leaves through the steep or vertical
    face below it) is inside the object only between two samples, and would otherwise see the plane far below. Such
    an interval is suspect when the ray at its lower end is less than half a step above the surface height under its
    upper end; suspect intervals above the bracketed hit are sampled again, finely, and the first hit found wins.

    Args:
        gap: ``gap(w, rays)``, the ray height above the surface at ray heights ``w`` (one column per ray).
        levels: ``(S + 1,)`` march heights, from the top of the slab down to the plane.
        gaps: ``(S + 1, C)`` gaps at the march heights.
        first: ``(C,)`` index of the first level at or below the surface.
        bracket: ``(w_hi, g_hi, w_lo, g_lo)`` of the bracketed hits, ``(C,)`` each.
    """
    w_hi, g_hi, w_lo, g_lo = bracket
    step = levels[0] - levels[1]
    surface = levels[:, None] - gaps
    suspect = (gaps[:-1] > 0) & (gaps[1:] > 0) & (surface[:-1] + 0.5 * step > levels[1:, None])
    suspect &= np.arange(levels.size - 1)[:, None] < (first - 1)[None]
    k, rays = np.nonzero(suspect)  # ordered by interval, so the first pair of a ray is its highest interval
    if not rays.size:
        return
    fine = levels[k][None] - (np.arange(1, _CLIP_STEPS + 1, dtype=np.float32) / _CLIP_STEPS)[:, None] * step
    fine_gaps = gap(fine, rays)
    below = fine_gaps <= 0
    hit = np.flatnonzero(below.any(0))
    if not hit.size:
        return
    hit = hit[np.unique(rays[hit], return_index=True)[1]]  # the highest interval with a hit, per ray
    ray, j = rays[hit], below[:, hit].argmax(0)
    w_hi[ray] = np.where(j > 0, fine[j - 1, hit], levels[k[hit]])
    g_hi[ray] = np.where(j > 0, fine_gaps[j - 1, hit], gaps[k[hit], ray])
    w_lo[ray], g_lo[ray] = fine[j, hit], fine_gaps[j, hit]


def _render(scene: _Scene, camera: CameraIntrinsics, rng: np.random.Generator) -> RenderedSample:
    """Ray-cast the scene for every pixel at once and simulate the sensor."""
    size_h, size_w = camera.height, camera.width
    frame = _Frame(scene)
    shape, defect = scene.shape, scene.defect
    normal, p0 = scene.plane_normal, scene.plane_point
    n_p0, u_p0, v_p0 = float(normal @ p0), float(scene.basis_u @ p0), float(scene.basis_v @ p0)

    # Unnormalised rays d = ((j - cx) / fx, (i - cy) / fy, 1); a point on the ray is z * d (z = depth). The height
    # above the plane along a ray is linear in the depth, w = z (n.d) - n.p0, and so are the plane coordinates.
    rays = _camera_rays(camera)
    n_pix = rays.shape[0]
    n_dot_d, u_dot_d, v_dot_d = rays @ normal, rays @ scene.basis_u, rays @ scene.basis_v

    w_max = _max_height(shape, defect)
    depth = n_p0 / n_dot_d  # background plane everywhere; rays that can meet the object are refined below
    w_hit = np.zeros(n_pix)

    # Rays that can meet the object: the part of the ray inside the height slab passes near the footprint.
    z_top = (w_max + n_p0) / n_dot_d
    u0, v0 = depth * u_dot_d - u_p0, depth * v_dot_d - v_p0
    u1, v1 = z_top * u_dot_d - u_p0, z_top * v_dot_d - v_p0
    mid_u, mid_v = (u0 + u1) / 2 - shape.center[0], (v0 + v1) / 2 - shape.center[1]
    reach = shape.scale * (_footprint_radius(shape) + 1e-3) + np.hypot(u1 - u0, v1 - v0) / 2
    cand = np.flatnonzero(np.hypot(mid_u, mid_v) < reach)
    # Along candidate ray c, plane coordinates are affine in the height: (u, v) = (a_u + b_u w, a_v + b_v w).
    inv_nd = 1.0 / n_dot_d[cand]
    b_u = (u_dot_d[cand] * inv_nd).astype(np.float32)
    b_v = (v_dot_d[cand] * inv_nd).astype(np.float32)
    a_u = (n_p0 * u_dot_d[cand] * inv_nd - u_p0).astype(np.float32)
    a_v = (n_p0 * v_dot_d[cand] * inv_nd - v_p0).astype(np.float32)

    def gap(w: np.ndarray, rays: np.ndarray | None = None) -> np.ndarray:
        """Height of the ray above the surface at ray height ``w`` (negative below the surface).

        ``rays`` selects candidate rays (``w`` then has one column per selected ray); ``None`` means all of them.
        """
        if rays is None:
            return w - frame.height(a_u + b_u * w, a_v + b_v * w)
        return w - frame.height(a_u[rays] + b_u[rays] * w, a_v[rays] + b_v[rays] * w)

    # March from the top of the slab down to the plane; the first sample below the surface brackets the hit (the
    # plane itself, w = 0, is never above the surface). Rays are close to the plane normal, so a few samples suffice;
    # the bracket is then refined by regula falsi (Illinois variant). Shapes with sharp edges get more of both.
    sharp = shape.kind != "bagel"
    march_steps = _MARCH_STEPS_SHARP if sharp else _MARCH_STEPS
    w_steps = (w_max * (1.0 - np.arange(march_steps + 1) / march_steps)).astype(np.float32)[:, None]
    gaps = gap(w_steps)
    first = (gaps <= 0).argmax(0)
    cols = np.arange(cand.size)
    w_hi, g_hi = w_steps[first - 1, 0], gaps[first - 1, cols]
    w_lo, g_lo = w_steps[first, 0], gaps[first, cols]
    if sharp:
        _catch_edge_clips(gap, w_steps[:, 0], gaps, first, (w_hi, g_hi, w_lo, g_lo))
    side = np.zeros(cand.size, dtype=np.int8)
    for _ in range(_REFINE_STEPS_SHARP if sharp else _REFINE_STEPS):
        w_new = w_lo - g_lo * (w_hi - w_lo) / (g_hi - g_lo)
        g_new = gap(w_new)
        is_below = g_new <= 0
        # Illinois: when the same end moves twice in a row, halve the other end's value.
        g_hi = np.where(is_below & (side == -1), g_hi * 0.5, g_hi)
        g_lo = np.where(~is_below & (side == 1), g_lo * 0.5, g_lo)
        w_lo, g_lo = np.where(is_below, w_new, w_lo), np.where(is_below, g_new, g_lo)
        w_hi, g_hi = np.where(is_below, w_hi, w_new), np.where(is_below, g_hi, g_new)
        side = np.where(is_below, -1, 1).astype(np.int8)
    w_c = (w_lo - g_lo * (w_hi - w_lo) / (g_hi - g_lo)).astype(np.float64)
    # A ray that meets a height jump (a vertical face, seen edge-on) converges to the jump without a root: no return.
    seen = np.ones(n_pix, dtype=bool)
    if sharp:
        seen[cand] = np.abs(gap(w_c.astype(np.float32))) <= _RESIDUAL_TOL
    depth[cand] = (w_c + n_p0) * inv_nd
    w_hit[cand] = w_c

    # Object-local coordinates and surface normals (world) of the hits; other rays see the bare plane.
    local_x = np.full(n_pix, 1.0)  # far outside the object
    local_y = np.full(n_pix, 1.0)
    px, py = frame.local(a_u + b_u * w_c.astype(np.float32), a_v + b_v * w_c.astype(np.float32))
    local_x[cand], local_y[cand] = px, py
    grad_u, grad_v = frame.gradient(px, py)
    n_c = normal[None] - grad_u[:, None] * scene.basis_u[None] - grad_v[:, None] * scene.basis_v[None]
    n_c /= np.linalg.norm(n_c, axis=1, keepdims=True)

    points = depth[:, None] * rays
    ranges = np.sqrt(np.einsum("ij,ij->i", points, points))
    to_projector = _PROJECTOR[None] - points
    to_projector /= np.sqrt(np.einsum("ij,ij->i", to_projector, to_projector))[:, None]
    cos_cam = -(points @ normal) / ranges
    cos_proj = to_projector @ normal
    cos_cam[cand] = -np.einsum("ij,ij->i", n_c, points[cand]) / ranges[cand]
    cos_proj[cand] = np.einsum("ij,ij->i", n_c, to_projector[cand])

    # Projector shadows: march from each candidate hit toward the projector through the height slab.
    lit = np.ones(n_pix, dtype=bool)
    hit_pts = points[cand]
    proj_w = float(normal @ (_PROJECTOR - p0))
    t_top = (w_max - w_c) / (proj_w - w_c)  # fraction of the way to the projector where the path leaves the slab
    shadow_steps = _SHADOW_STEPS_SHARP if sharp else _SHADOW_STEPS
    fractions = ((np.arange(1, shadow_steps + 1) / shadow_steps)[:, None] * t_top[None]).astype(np.float32)
    rel = (hit_pts - p0).astype(np.float32)
    step = (_PROJECTOR - hit_pts).astype(np.float32)
    path_u = (rel @ scene.basis_u.astype(np.float32))[None] + fractions * (step @ scene.basis_u.astype(np.float32))
    path_v = (rel @ scene.basis_v.astype(np.float32))[None] + fractions * (step @ scene.basis_v.astype(np.float32))
    path_w = w_c.astype(np.float32)[None] + fractions * (proj_w - w_c).astype(np.float32)[None]
    lit[cand] = ~np.any(frame.height(path_u, path_v) > path_w + 1e-4, axis=0)

    # Point cloud: noise along the ray, then dropouts (steep flanks, shadows, random specks and small blobs).
    noisy = points * ((ranges + rng.normal(0.0, _NOISE_STD, n_pix)) / ranges)[:, None]
    drop_p = np.maximum(_dropout_probability(cos_cam), _dropout_probability(cos_proj))
    valid = lit & (rng.random(n_pix) >= drop_p) & (rng.random(n_pix) >= 1e-3)
    if sharp:
        valid &= seen
    blob_scale = max(min(size_h, size_w) / 224, 0.35)
    for _ in range(rng.poisson(3)):
        ci, cj = rng.uniform(0, size_h), rng.uniform(0, size_w)
        radius = rng.uniform(0.8, 2.2) * blob_scale
        rows = np.arange(max(int(ci - radius), 0), min(int(ci + radius) + 2, size_h))
        cols = np.arange(max(int(cj - radius), 0), min(int(cj + radius) + 2, size_w))
        inside = (rows[:, None] - ci) ** 2 + (cols[None] - cj) ** 2 <= radius**2
        valid[(rows[:, None] * size_w + cols[None])[inside]] = False
    xyz = np.where(valid[:, None], noisy, 0.0).astype(np.float32).reshape(size_h, size_w, 3)

    # Ground truth: defect region at the visible surface point, on the object.
    on_object = _base_height(shape, local_x, local_y) > 0
    gt = _defect_region(defect, local_x, local_y) & on_object
    mask = np.where(gt, 255, 0).astype(np.uint8).reshape(size_h, size_w)

    rgb = _shade(scene, local_x, local_y, w_hit, on_object, cand, points, cos_cam, cos_proj, lit, rng)
    return RenderedSample(rgb=rgb.reshape(size_h, size_w, 3), xyz=xyz, mask=mask)


def _shade(
    scene: _Scene,
    local_x: np.ndarray,
    local_y: np.ndarray,
    w_hit: np.ndarray,
    on_object: np.ndarray,
    cand: np.ndarray,
    points: np.ndarray,
    cos_cam: np.ndarray,
    cos_proj: np.ndarray,
    lit: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """RGB values (uint8, ``(N, 3)``) from albedo, normals and shadows."""
    shape, defect = scene.shape, scene.defect
    n_pix = points.shape[0]

    # Background plane: dark grey with a faint texture.
    rel = points - scene.plane_point
    pu, pv = (rel @ scene.basis_u).astype(np.float32), (rel @ scene.basis_v).astype(np.float32)
    plane_var = np.zeros(n_pix, dtype=np.float32)
    for kx, ky, phase in scene.plane_tex.astype(np.float32):
        plane_var += np.sin(pu * kx + pv * ky + phase)
    albedo = np.empty((n_pix, 3), dtype=np.float32)
    albedo[:] = (scene.plane_albedo * (1.0 + 0.04 * plane_var))[:, None]

    # Object: base colour, smooth texture, darker (more baked) towards the top.
    obj = cand[on_object[cand]]
    ox, oy = local_x[obj], local_y[obj]
    texture = np.sin(ox[:, None] * shape.tex_vectors[:, 0] + oy[:, None] * shape.tex_vectors[:, 1] + shape.tex_phases)
    if shape.kind == "bagel":
        top = np.clip(w_hit[obj] / (shape.scale * shape.height_factor * _TUBE_RADIUS), 0.0, 1.0)
        obj_albedo = shape.base_color[None] * ((1.0 + 0.05 * texture.sum(1)) * (1.0 - 0.3 * top**2))[:, None]
    else:
        top = np.clip(w_hit[obj] / (shape.scale * _nominal_height(shape)), 0.0, 1.0)
        obj_albedo = shape.base_color[None] * ((1.0 + 0.04 * texture.sum(1)) * (1.0 - 0.12 * top))[:, None]
    if defect is not None:
        region = _defect_region(defect, ox, oy)
        disp = _displacement(defect, ox, oy)
        if defect.kind == "color":
            soft = np.clip((1.0 - _stain_radius(defect, ox - defect.center[0], oy - defect.center[1])) / 0.15, 0, 1)
            mix = 0.85 * soft[:, None]
            obj_albedo = (1 - mix) * obj_albedo + mix * defect.color[None]
        elif disp is not None and defect.kind in ("hole", "crack"):
            darken = np.clip(-disp / (0.5 * abs(defect.depth)), 0.0, 1.0)
            obj_albedo *= (1.0 - 0.45 * darken * region)[:, None]
    albedo[obj] = obj_albedo

    shading = 0.22 + 0.7 * np.clip(cos_proj, 0.0, None) * lit + 0.18 * np.clip(cos_cam, 0.0, None)
    rgb = albedo * shading.astype(np.float32)[:, None]
    rgb += rng.standard_normal((n_pix, 3), dtype=np.float32) * np.float32(0.008)
    rgb *= np.float32(255.0)
    rgb += np.float32(0.5)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------------------------


def sample_seed(seed: int, split: str, label: str, index: int) -> list[int]:
    """Seed sequence of one sample of :func:`generate_category`.

    ``render_sample(image_size, defect, sample_seed(seed, split, label, index))`` reproduces the written sample.

    Args:
        seed: Base seed of the category.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        label: ``"good"`` or a defect type.
        index: Sample index (the file number).

    Returns:
        The entropy for ``numpy.random.default_rng``.

    Raises:
        ValueError: If ``split`` or ``label`` is unknown.
    """
    if split not in _SPLIT_CODES:
        msg = f"split={split!r} is unknown; use one of {', '.join(_SPLIT_CODES)}."
        raise ValueError(msg)
    if label != "good" and label not in DEFECT_TYPES:
        msg = f"label={label!r} is unknown; use 'good' or one of {', '.join(DEFECT_TYPES)}."
        raise ValueError(msg)
    code = 0 if label == "good" else DEFECT_TYPES.index(label) + 1
    return [int(seed), _SPLIT_CODES[split], code, int(index)]


def _is_size(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= MIN_IMAGE_SIZE


def _check_image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Validate ``image_size`` and return it as ``(height, width)``."""
    if _is_size(image_size):
        return int(image_size), int(image_size)  # type: ignore[arg-type]
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(_is_size(v) for v in image_size):
        return int(image_size[0]), int(image_size[1])
    msg = (
        f"image_size={image_size!r} is invalid; pass an integer of at least {MIN_IMAGE_SIZE} (e.g. 224) or a "
        f"(height, width) pair of such integers (e.g. (240, 320))."
    )
    raise ValueError(msg)


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        msg = f"shape={shape!r} is unknown; use one of {', '.join(SHAPES)}."
        raise ValueError(msg)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        msg = f"{name}={value!r} is invalid; pass a non-negative integer."
        raise ValueError(msg)


def _parse_defects(defects: Sequence[str] | str) -> tuple[str, ...]:
    items = defects.split(",") if isinstance(defects, str) else list(defects)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in DEFECT_TYPES:
            msg = f"defects contains unknown defect type {item!r}; choose from {', '.join(DEFECT_TYPES)}."
            raise ValueError(msg)
        if name not in names:
            names.append(name)
    return tuple(names)


def _check_category(category: str) -> None:
    if not isinstance(category, str) or not category or category in (".", "..") or any(c in category for c in "/\\"):
        msg = f"category={category!r} is invalid; pass a plain directory name such as 'synthetic'."
        raise ValueError(msg)


def _write_sample(sample: RenderedSample, directory: Path, index: int, with_mask: bool) -> None:
    name = f"{index:03d}"
    Image.fromarray(sample.rgb).save(directory / "rgb" / f"{name}.png", compress_level=1)
    tifffile.imwrite(directory / "xyz" / f"{name}.tiff", sample.xyz, photometric="rgb")
    if with_mask:
        Image.fromarray(sample.mask).save(directory / "gt" / f"{name}.png", compress_level=1)


def generate_category(
    root: str | Path,
    category: str = "synthetic",
    n_train: int = 20,
    n_validation: int = 4,
    n_test_good: int = 8,
    n_test_per_defect: int = 4,
    image_size: int = 224,
    defects: Sequence[str] = ("dent", "bump", "crack", "hole", "color"),
    seed: int = 0,
    overwrite: bool = False,
    shape: str = "bagel",
) -> Path:
    """Generate one category in the MVTec 3D-AD layout.

    Writes ``<root>/<category>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}``,
    ``<root>/<category>/test/<good|defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}`` (``gt`` all zero for ``good``) and
    ``<root>/<category>/calibration/camera_parameters.json``. The category is built in a hidden temporary
    directory next to it and moved into place only when complete, so an interrupted run never leaves a half-written
    category behind. ``anomalib.data.MVTec3D(root=root, category=category)`` reads the result without downloading.

    Args:
        root: Dataset root directory (created if missing).
        category: Category directory name.
        n_train: Number of good training samples.
        n_validation: Number of good samples in ``validation/good``.
        n_test_good: Number of good test samples.
        n_test_per_defect: Number of test samples per defect type.
        image_size: Width and height of square images in pixels, or ``(height, width)`` (each at least 32). The
            shorter side always covers the same 0.11 m of the scene.
        defects: Defect types to generate, a subset of :data:`DEFECT_TYPES` (or a comma-separated string).
        seed: Base seed; the same seed and arguments give identical files.
        overwrite: Replace an existing non-empty ``<root>/<category>`` directory.
        shape: Object shape, one of :data:`SHAPES` (see the module docstring). All samples of a category show the
            same kind of object in varied poses.

    Returns:
        The category directory ``<root>/<category>``.

    Raises:
        ValueError: On an unknown defect type or shape, ``image_size`` below 32, a negative count, an invalid category
            name, or an existing non-empty category directory without ``overwrite=True``.
    """
    _check_category(category)
    _check_image_size(image_size)
    _check_shape(shape)
    for name, value in (
        ("n_train", n_train),
        ("n_validation", n_validation),
        ("n_test_good", n_test_good),
        ("n_test_per_defect", n_test_per_defect),
    ):
        _check_count(name, value)
    defect_names = _parse_defects(defects)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        msg = f"seed={seed!r} is invalid; pass a non-negative integer."
        raise ValueError(msg)

    root = Path(root)
    target = root / category
    if target.exists() and not target.is_dir():
        msg = f"Output path {target} exists and is not a directory; choose another root or category."
        raise ValueError(msg)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        msg = (
            f"Output directory {target} already exists and is not empty; pass overwrite=True (--overwrite) to replace "
            "it, or choose another root or category."
        )
        raise ValueError(msg)

    root.mkdir(parents=True, exist_ok=True)
    camera = camera_intrinsics(image_size)
    groups = [("train", "good", n_train), ("validation", "good", n_validation), ("test", "good", n_test_good)]
    groups += [("test", name, n_test_per_defect) for name in defect_names]

    staging = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=root))
    try:
        for split, label, count in groups:
            directory = staging / split / label
            for sub in ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz"):
                (directory / sub).mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng(sample_seed(seed, split, label, index))
                scene = _sample_scene(rng, None if label == "good" else label, shape)
                _write_sample(_render(scene, camera, rng), directory, index, with_mask=split == "test")

        (staging / "calibration").mkdir()
        (staging / "calibration" / "camera_parameters.json").write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
        info: dict[str, object] = {
            "generator": "anomalib_btm.data.synthetic",
            "seed": int(seed),
            "image_size": int(image_size) if _is_size(image_size) else [camera.height, camera.width],
            "n_train": int(n_train),
            "n_validation": int(n_validation),
            "n_test_good": int(n_test_good),
            "n_test_per_defect": int(n_test_per_defect),
            "defects": list(defect_names),
            "units": "metres",
        }
        # Written only when they are not implied (keeps the default category byte-identical to earlier versions).
        if not _is_size(image_size):
            info["image_height"], info["image_width"] = camera.height, camera.width
        if shape != "bagel":
            info["shape"] = shape
        (staging / "synthetic_info.json").write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp creates the directory private to the user

        old: Path | None = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{category}.old-", dir=root))
            old.rmdir()
            target.rename(old)
        try:
            staging.rename(target)
        except BaseException:
            if old is not None:
                old.rename(target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _build_parser() -> ArgumentParser:
    defaults = signature_defaults(generate_category)
    parser = ArgumentParser(
        prog="python -m anomalib_btm.data.synthetic",
        description="Generate a synthetic RGB + XYZ anomaly-detection category in the MVTec 3D-AD layout.",
    )
    parser.add_argument("root", type=Path, help="dataset root directory; the category is written to ROOT/CATEGORY")
    parser.add_argument("--category", default=defaults["category"], help="category name")
    parser.add_argument("--n-train", type=int, default=defaults["n_train"], help="good training samples")
    parser.add_argument("--n-validation", type=int, default=defaults["n_validation"], help="good validation samples")
    parser.add_argument("--n-test-good", type=int, default=defaults["n_test_good"], help="good test samples")
    parser.add_argument(
        "--n-test-defect", type=int, default=defaults["n_test_per_defect"], help="test samples per defect"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[defaults["image_size"]],
        metavar=("SIZE", "WIDTH"),
        help="square image size in px, or HEIGHT WIDTH",
    )
    parser.add_argument("--shape", default=defaults["shape"], choices=SHAPES, help="object shape")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="random seed")
    parser.add_argument("--defects", default=",".join(defaults["defects"]), help="comma-separated defect types")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty category directory")
    return parser


def _generate(args: argparse.Namespace) -> int:
    if len(args.image_size) > 2:
        msg = "--image-size takes one value (square) or two (HEIGHT WIDTH)"
        raise UsageError(msg)
    path = generate_category(
        args.root,
        category=args.category,
        n_train=args.n_train,
        n_validation=args.n_validation,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_defect,
        image_size=args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size),
        defects=args.defects,
        seed=args.seed,
        overwrite=args.overwrite,
        shape=args.shape,
    )
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status (0 on success, 2 on invalid arguments, with one line on stderr).
    """
    return run(_build_parser(), argv, _generate)


if __name__ == "__main__":
    sys.exit(main())
