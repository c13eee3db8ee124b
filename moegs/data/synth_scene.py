"""Analytic primitives of the synthetic scene: motion, ray intersection and distance to the surface.

The generator's ground truth must not come from the model class (Gaussians), so every surface here
is an exact analytic shape whose position at normalised time ``t`` is a closed-form function. The
same objects answer three questions: where does a ray hit them (rendering), which texture
coordinate and normal does the hit have (shading), and how far is a world point from them
(scoring COLMAP triangulation). Primitives serialise to plain JSON dicts so ``scene.json`` alone
recreates every surface.

World frame: OpenCV-like, x right, y down, z away from the cameras; units are roughly metres.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from moegs.errors import InputError

_EPS = 1e-6


@dataclass(frozen=True)
class Hit:
    """Per-ray result of one primitive: ray parameter ``s`` (inf on a miss), texture uv and normal.

    ``s`` multiplies a direction whose camera-frame z is 1, so it is also the camera z-depth.
    ``uv`` and ``normal`` are only meaningful where ``s`` is finite.
    """

    s: np.ndarray
    uv: np.ndarray
    normal: np.ndarray


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about a (not necessarily unit) axis."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _vec(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class Tint:
    """Time-varying colour of a static surface: brightness pulses and a hue offset cycles.

    ``colour(t) = brightness(t) * colour + saturation * cos(2 pi (hue_cycles * t + phase + (0, 1/3, 2/3)))``
    with ``brightness(t) = 0.8 + 0.2 * sin(2 pi pulse_cycles * t)``. The hue term sums to zero over
    the channels, so it moves chroma without touching the texture's (high-frequency) luminance.
    """

    hue_cycles: float
    pulse_cycles: float
    phase: float
    saturation: float

    def apply(self, colour: np.ndarray, t: float) -> np.ndarray:
        angles = 2.0 * np.pi * (self.hue_cycles * t + self.phase + np.array([0.0, 1.0 / 3.0, 2.0 / 3.0]))
        brightness = 0.8 + 0.2 * np.sin(2.0 * np.pi * self.pulse_cycles * t)
        return brightness * colour + self.saturation * np.cos(angles)


@dataclass(frozen=True)
class Primitive(ABC):
    """Fields every primitive shares: a name, the region label, and how its texture is made."""

    name: str
    region: int
    texture: str
    texel: float

    kind: ClassVar[str] = ""
    dynamic: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}

    @abstractmethod
    def uv_extent(self) -> tuple[float, float]:
        """Range of the texture coordinates [0, u] x [0, v], in world units."""

    @abstractmethod
    def bounding_sphere(self, t: float) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere enclosing the surface at time t (used to crop rays)."""

    @abstractmethod
    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hit:
        """First hit of the rays ``origin + s * dirs`` (dirs [N, 3]) with s > 0."""

    @abstractmethod
    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        """Euclidean distance of each point [N, 3] to the surface at time t."""


@dataclass(frozen=True)
class Rect(Primitive):
    """A static textured rectangle ``origin + a u + b v`` with a in [0, size0], b in [0, size1]."""

    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    u_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    v_axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    size: tuple[float, float] = (1.0, 1.0)
    tint: Tint | None = None

    kind: ClassVar[str] = "rect"

    def uv_extent(self) -> tuple[float, float]:
        return float(self.size[0]), float(self.size[1])

    def bounding_sphere(self, t: float) -> tuple[np.ndarray, float]:
        half = 0.5 * (self.size[0] * _vec(self.u_axis) + self.size[1] * _vec(self.v_axis))
        return _vec(self.origin) + half, float(np.linalg.norm(half))

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hit:
        u, v, o = _vec(self.u_axis), _vec(self.v_axis), _vec(self.origin)
        normal = np.cross(u, v)
        denom = dirs @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            s = ((o - origin) @ normal) / denom
        rel = origin[None, :] + s[:, None] * dirs - o
        a, b = rel @ u, rel @ v
        ok = np.isfinite(s) & (s > _EPS) & (a >= 0) & (a <= self.size[0]) & (b >= 0) & (b <= self.size[1])
        s = np.where(ok, s, np.inf)
        return Hit(s=s, uv=np.stack([a, b], axis=-1), normal=np.broadcast_to(normal, dirs.shape))

    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        u, v, o = _vec(self.u_axis), _vec(self.v_axis), _vec(self.origin)
        rel = points - o
        a = np.clip(rel @ u, 0.0, self.size[0])
        b = np.clip(rel @ v, 0.0, self.size[1])
        return np.linalg.norm(rel - a[:, None] * u - b[:, None] * v, axis=-1)


@dataclass(frozen=True)
class Box(Primitive):
    """A rigid box: centre ``c0 + amplitude * sin(2 pi frequency t + phase)`` per axis, spinning
    about ``axis`` by ``angle0 + spin * t``. Its six faces are laid side by side in the texture."""

    half_size: tuple[float, float, float] = (0.3, 0.3, 0.3)
    centre: tuple[float, float, float] = (0.0, 0.0, 4.0)
    amplitude: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frequency: tuple[float, float, float] = (1.0, 1.0, 1.0)
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    angle0: float = 0.0
    spin: float = 0.0

    kind: ClassVar[str] = "box"
    dynamic: ClassVar[bool] = True

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(centre, object-to-world rotation) at time t."""
        wave = np.sin(2.0 * np.pi * _vec(self.frequency) * t + _vec(self.phase))
        centre = _vec(self.centre) + _vec(self.amplitude) * wave
        return centre, rotation(_vec(self.axis), self.angle0 + self.spin * t)

    def _tile(self) -> float:
        return 2.0 * float(max(self.half_size))

    def uv_extent(self) -> tuple[float, float]:
        return 6.0 * self._tile(), self._tile()

    def bounding_sphere(self, t: float) -> tuple[np.ndarray, float]:
        return self.pose(t)[0], float(np.linalg.norm(self.half_size))

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hit:
        centre, rot = self.pose(t)
        half = _vec(self.half_size)
        o_local = rot.T @ (origin - centre)
        d_local = dirs @ rot
        d_local = np.where(np.abs(d_local) < 1e-12, 1e-12, d_local)
        t1 = (-half - o_local) / d_local
        t2 = (half - o_local) / d_local
        near = np.minimum(t1, t2)
        t_in, t_out = near.max(axis=1), np.maximum(t1, t2).min(axis=1)
        ok = (t_out >= t_in) & (t_in > _EPS)
        s = np.where(ok, t_in, np.inf)
        # The entry face is the slab entered last; its outward normal opposes the ray.
        face_axis = near.argmax(axis=1)
        rows = np.arange(len(dirs))
        sign = -np.sign(d_local[rows, face_axis])
        q = o_local[None, :] + np.where(ok, t_in, 0.0)[:, None] * d_local + half
        other = np.array([[1, 2], [0, 2], [0, 1]])[face_axis]
        tile = self._tile()
        face = 2 * face_axis + (sign > 0)
        uv = np.stack([face * tile + q[rows, other[:, 0]], q[rows, other[:, 1]]], axis=-1)
        normal = rot[:, face_axis].T * sign[:, None]
        return Hit(s=s, uv=uv, normal=normal)

    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        centre, rot = self.pose(t)
        q = np.abs((points - centre) @ rot) - _vec(self.half_size)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return np.abs(outside + inside)


@dataclass(frozen=True)
class Sphere(Primitive):
    """A small ball bouncing on the floor: x and z oscillate, y is ``floor_y - radius - height *
    |sin(pi bounces t + bounce_phase)|``; it spins about ``axis`` at ``spin`` rad per unit time."""

    radius: float = 0.15
    floor_y: float = 1.2
    x0: float = 0.0
    x_amplitude: float = 0.5
    x_cycles: float = 1.0
    z0: float = 3.0
    z_amplitude: float = 0.2
    height: float = 0.9
    bounces: float = 3.0
    bounce_phase: float = 0.0
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    spin: float = 0.0

    kind: ClassVar[str] = "sphere"
    dynamic: ClassVar[bool] = True

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        x = self.x0 + self.x_amplitude * np.sin(2.0 * np.pi * self.x_cycles * t)
        y = self.floor_y - self.radius - self.height * abs(np.sin(np.pi * self.bounces * t + self.bounce_phase))
        z = self.z0 + self.z_amplitude * np.sin(2.0 * np.pi * t)
        return np.array([x, y, z]), rotation(_vec(self.axis), self.spin * t)

    def uv_extent(self) -> tuple[float, float]:
        return 2.0 * np.pi * self.radius, np.pi * self.radius

    def bounding_sphere(self, t: float) -> tuple[np.ndarray, float]:
        return self.pose(t)[0], self.radius

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hit:
        centre, rot = self.pose(t)
        oc = origin - centre
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = 2.0 * (dirs @ oc)
        c = oc @ oc - self.radius**2
        disc = b * b - 4.0 * a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        s = (-b - root) / (2.0 * a)
        ok = (disc >= 0) & (s > _EPS)
        s = np.where(ok, s, np.inf)
        normal = (origin[None, :] + np.where(ok, s, 0.0)[:, None] * dirs - centre) / self.radius
        local = normal @ rot
        lon = np.arctan2(local[:, 0], local[:, 2])
        lat = np.arcsin(np.clip(local[:, 1], -1.0, 1.0))
        uv = np.stack([(lon + np.pi) * self.radius, (lat + 0.5 * np.pi) * self.radius], axis=-1)
        return Hit(s=s, uv=uv, normal=normal)

    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        centre, _ = self.pose(t)
        return np.abs(np.linalg.norm(points - centre, axis=-1) - self.radius)


@dataclass(frozen=True)
class Wave:
    """One travelling sine wave of a height field: ``amplitude * sin(kx x + ky y - omega t + phase)``."""

    amplitude: float
    kx: float
    ky: float
    omega: float
    phase: float


@dataclass(frozen=True)
class HeightField(Primitive):
    """A flag: the sheet ``z = z0 + h(x, y, t)`` over [x0, x0 + width] x [y0, y0 + height], pinned
    along x = x0 (h is scaled by the distance from the pole), so it deforms non-rigidly."""

    x0: float = 0.0
    y0: float = 0.0
    width: float = 1.0
    height: float = 1.0
    z0: float = 4.0
    waves: tuple[Wave, ...] = field(default_factory=tuple)

    kind: ClassVar[str] = "heightfield"
    dynamic: ClassVar[bool] = True
    _NEWTON_STEPS: ClassVar[int] = 8

    def height_and_slope(self, x: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """h, dh/dx, dh/dy at (x, y) and time t."""
        lx, ly = x - self.x0, y - self.y0
        pin = lx / self.width
        total = np.zeros_like(lx)
        dx = np.zeros_like(lx)
        dy = np.zeros_like(lx)
        for w in self.waves:
            arg = w.kx * lx + w.ky * ly - w.omega * t + w.phase
            sin, cos = np.sin(arg), np.cos(arg)
            total += w.amplitude * sin
            dx += w.amplitude * w.kx * cos
            dy += w.amplitude * w.ky * cos
        return pin * total, total / self.width + pin * dx, pin * dy

    def uv_extent(self) -> tuple[float, float]:
        return self.width, self.height

    def bounding_sphere(self, t: float) -> tuple[np.ndarray, float]:
        reach = sum(abs(w.amplitude) for w in self.waves)
        centre = np.array([self.x0 + 0.5 * self.width, self.y0 + 0.5 * self.height, self.z0])
        return centre, float(np.sqrt((0.5 * self.width) ** 2 + (0.5 * self.height) ** 2 + reach**2))

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hit:
        # Newton on f(s) = z(s) - z0 - h(x(s), y(s)); the waves are gentle enough (|grad h| * |dxy/dz|
        # < 1 for every camera of the rig) that f is monotonic along a ray, so the root is unique.
        s = (self.z0 - origin[2]) / dirs[:, 2]
        for _ in range(self._NEWTON_STEPS):
            x, y = origin[0] + s * dirs[:, 0], origin[1] + s * dirs[:, 1]
            h, hx, hy = self.height_and_slope(x, y, t)
            f = origin[2] + s * dirs[:, 2] - self.z0 - h
            s = s - f / (dirs[:, 2] - hx * dirs[:, 0] - hy * dirs[:, 1])
        x, y = origin[0] + s * dirs[:, 0], origin[1] + s * dirs[:, 1]
        h, hx, hy = self.height_and_slope(x, y, t)
        residual = np.abs(origin[2] + s * dirs[:, 2] - self.z0 - h)
        ok = (
            (s > _EPS)
            & (residual < 1e-6)
            & (x >= self.x0)
            & (x <= self.x0 + self.width)
            & (y >= self.y0)
            & (y <= self.y0 + self.height)
        )
        normal = np.stack([hx, hy, -np.ones_like(hx)], axis=-1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        uv = np.stack([x - self.x0, y - self.y0], axis=-1)
        return Hit(s=np.where(ok, s, np.inf), uv=uv, normal=normal)

    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        # Gauss-Newton projection onto the sheet, clamped to its extent: the result is the distance
        # to an actual sheet point, exact for points near the surface (the ones that matter).
        x = np.clip(points[:, 0], self.x0, self.x0 + self.width)
        y = np.clip(points[:, 1], self.y0, self.y0 + self.height)
        for _ in range(10):
            h, hx, hy = self.height_and_slope(x, y, t)
            rx, ry, rz = x - points[:, 0], y - points[:, 1], self.z0 + h - points[:, 2]
            # J = [[1, 0], [0, 1], [hx, hy]]; solve (J^T J) step = -J^T r in closed form.
            gx, gy = rx + hx * rz, ry + hy * rz
            a, b, d = 1.0 + hx * hx, hx * hy, 1.0 + hy * hy
            det = a * d - b * b
            x = np.clip(x - (d * gx - b * gy) / det, self.x0, self.x0 + self.width)
            y = np.clip(y - (a * gy - b * gx) / det, self.y0, self.y0 + self.height)
        h, _, _ = self.height_and_slope(x, y, t)
        return np.linalg.norm(np.stack([x, y, self.z0 + h], axis=-1) - points, axis=-1)


_KINDS: dict[str, type[Primitive]] = {cls.kind: cls for cls in (Rect, Box, Sphere, HeightField)}


def primitive_from_json(data: dict[str, Any]) -> Primitive:
    """Inverse of :meth:`Primitive.to_json` (lists back to tuples, nested tints and waves rebuilt)."""
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in _KINDS:
        raise InputError(f"scene.json: unknown primitive type {kind!r} (known: {sorted(_KINDS)})")
    for key, value in data.items():
        if isinstance(value, list) and key != "waves":
            data[key] = tuple(value)
    if data.get("tint") is not None:
        data["tint"] = Tint(**data["tint"])
    if "waves" in data:
        data["waves"] = tuple(Wave(**w) for w in data["waves"])
    try:
        return _KINDS[kind](**data)
    except TypeError as exc:
        raise InputError(f"scene.json: bad {kind} primitive {data.get('name')!r} ({exc})") from None


@dataclass(frozen=True)
class Scene:
    """All primitives plus the lighting: a directional light (unit vector towards the light),
    Lambertian shading ``albedo * (ambient + diffuse * max(0, n . light))``, and a sky colour for
    rays that hit nothing."""

    primitives: tuple[Primitive, ...]
    light: tuple[float, float, float]
    ambient: float
    diffuse: float
    sky: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "primitives": [p.to_json() for p in self.primitives],
            "light": list(self.light),
            "ambient": self.ambient,
            "diffuse": self.diffuse,
            "sky": list(self.sky),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scene:
        try:
            return cls(
                primitives=tuple(primitive_from_json(p) for p in data["primitives"]),
                light=tuple(data["light"]),
                ambient=float(data["ambient"]),
                diffuse=float(data["diffuse"]),
                sky=tuple(data["sky"]),
            )
        except KeyError as exc:
            raise InputError(f"scene.json: missing key {exc}") from None

    def distance(self, points: np.ndarray, t: float) -> np.ndarray:
        """Distance of each point [N, 3] to the nearest surface of any primitive at time t."""
        return np.min([p.distance(points, t) for p in self.primitives], axis=0)
