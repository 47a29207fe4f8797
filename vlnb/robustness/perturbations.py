"""Image perturbations for robustness sweeps: batched, seeded, on any device, before normalisation.

Every perturbation is a callable ``p(x, ids=None) -> y`` on a float batch ``x`` of shape ``(B, 3, H, W)``
with values in ``[0, 1]`` — the model's *resized and cropped but not yet normalised* pixels
(``ImagePreprocess.to_unit``); the model's own normalisation is applied afterwards
(``preprocess.normalize``). ``y`` has ``x``'s shape, dtype and device and stays in ``[0, 1]``; ``x`` is
never modified. ``p.key`` (a string) names the perturbation exactly and is part of feature-cache keys.

**Determinism.** Random perturbations draw from one seeded ``torch.Generator`` *per image*, on ``x``'s
device, seeded with a hash of ``(seed, family, image id)``; ``ids`` are the images' ids (the feature
code passes them), without them the row index in the batch stands in. So an image gets the same noise
whatever batch it is in and whatever the batch size; the same seed on the same kind of device gives
identical output (CPU and CUDA generators produce different streams). The severity is *not* part of
the per-image seed, so severities 1–5 of one family use common random numbers (e.g. one noise field
scaled up), which makes severity curves smoother than independent draws would.

**Families** (:data:`CORRUPTIONS`; build one with :func:`corruption`, severity 0 is the identity):

- ImageNet-C's (Hendrycks & Dietterich, ICLR 2019) at severities 1-5, with its constants
  (:data:`SEVERITY_CONSTANTS`, as in the ``imagecorruptions`` package of Michaelis et al. 2019):
  ``gaussian_noise``, ``shot_noise``, ``impulse_noise``, ``speckle_noise``, ``gaussian_blur``,
  ``defocus_blur``, ``motion_blur``, ``brightness``, ``contrast``, ``saturate``, ``jpeg_compression``,
  ``pixelate``. Not implemented: glass/zoom blur, snow, frost, fog, spatter, elastic transform.
- occlusion by a grey square: ``occlusion_random`` (uniform position), ``occlusion_centre``,
  ``occlusion_object`` (centred on the largest object, using the data set's masks, see
  :class:`ObjectMasks`), with the square's side a fraction ``0.1, 0.2, 0.3, 0.4, 0.5`` of the image side.

**Resolution.** ImageNet-C's spatial constants (blur radii and sigmas) are pixels at 224x224. Here they
are scaled by ``min(H, W) / reference_size`` (``reference_size=224`` by default, ``None`` keeps raw pixels),
so a severity means the same amount of blur relative to the image at any model input size; at 224 px they
are ImageNet-C's exactly. Pixelate, JPEG quality, noise and colour constants do not depend on size.

Differences from the reference implementation (checked against ``imagecorruptions`` in the tests):
outputs are not quantised to 8 bits; JPEG is a torch re-implementation of baseline JPEG (libjpeg's
quantisation tables and quality scaling, 4:2:0 chroma subsampling, triangle chroma upsampling), within
about one grey level of Pillow's libjpeg on average; motion blur clamps at the border where the
reference stops accumulating shifts that leave the image; the defocus disk is anti-aliased by area
coverage when the scaled radius is not an integer (an aliased disk would snap it to whole pixels).

The parametric perturbations the seed study used are here too: :class:`GaussianNoise` (``std``),
:class:`GaussianBlur` (``sigma`` or ``kernel_size``) and :class:`Occlusion` (patch ``size`` in pixels or
as a fraction of the image side; ``mode`` random / centre / object).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..data import get_annotations

VERSION = 1
REFERENCE_SIZE = 224

#: ImageNet-C's per-severity constants (severity s uses element s-1), as in Hendrycks & Dietterich's
#: ``make_imagenet_c.py`` and the ``imagecorruptions`` package; occlusion sides are vlnb's own.
SEVERITY_CONSTANTS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise std
    "shot_noise": (60, 25, 12, 5, 3),  # photons per unit intensity (Poisson rate)
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # fraction of salt-and-pepper values
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),  # multiplicative noise std
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma (px at 224)
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # (disk radius px at 224, alias blur)
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # (radius, sigma) px at 224
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor towards the per-channel mean
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # HSV saturation * a + b
    "jpeg_compression": (25, 18, 15, 10, 7),  # JPEG quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downsampling factor
    "occlusion_random": (0.1, 0.2, 0.3, 0.4, 0.5),  # square side / image side
    "occlusion_centre": (0.1, 0.2, 0.3, 0.4, 0.5),
    "occlusion_object": (0.1, 0.2, 0.3, 0.4, 0.5),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_CONSTANTS)
#: The families whose output changes with the seed.
RANDOM_FAMILIES = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur",
                             "occlusion_random"})
OCCLUSION_MODES = ("random", "centre", "object")


# ---------------------------------------------------------------------------------------------- base
def _check_batch(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"perturbations take a torch.Tensor batch, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) image batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected float pixels in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")


def _id_text(i) -> str:
    return str(i.item() if isinstance(i, np.generic) else i)


def image_seeds(seed: int, family: str, ids: Sequence | None, n: int) -> list[int]:
    """Per-image 63-bit seeds from ``(seed, family, image id)`` (row index when ``ids`` is None)."""
    if ids is not None and len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for a batch of {n} images")
    keys = ids if ids is not None else [f"#row{r}" for r in range(n)]
    return [int.from_bytes(hashlib.sha256(f"{seed}|{family}|{_id_text(k)}".encode()).digest()[:8], "little") >> 1
            for k in keys]


def _generators(seeds: list[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


class Perturbation:
    """Base class: subclasses set ``family``/``params`` and implement ``_apply(x, gens)`` on float32."""

    family: str = "identity"
    random: bool = False
    #: the feature code passes ``ids=`` (image ids of the batch) to perturbations that declare this
    accepts_ids: bool = True

    def __init__(self, params: dict | None = None, severity: int | None = None, seed: int = 0):
        self.params = dict(params or {})
        self.severity = severity
        self.seed = int(seed)

    @property
    def key(self) -> str:
        """Exact, stable description (family, severity, resolved parameters, seed, version)."""
        p = json.dumps(self.params, sort_keys=True, default=str)
        seed = f";seed={self.seed}" if self.random else ""
        return f"{self.family}[s={self.severity}]{p}{seed};v{VERSION}"

    @property
    def is_identity(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key})"

    def __call__(self, x: torch.Tensor, ids: Sequence | None = None) -> torch.Tensor:
        _check_batch(x)
        if self.is_identity or len(x) == 0:
            return x.clone()
        gens = _generators(image_seeds(self.seed, self.family, ids, len(x)), x.device) if self.random else None
        y = self._apply(x.detach().float(), gens, ids)
        return y.clamp_(0.0, 1.0).to(x.dtype)

    def _apply(self, x: torch.Tensor, gens: list[torch.Generator] | None, ids) -> torch.Tensor:
        raise NotImplementedError


class Identity(Perturbation):
    """Severity 0 of every family: returns a copy of the input."""

    def __init__(self, family: str = "identity"):
        super().__init__({}, 0)
        self.family = family

    @property
    def is_identity(self) -> bool:
        return True


def _per_image(gens, fn) -> torch.Tensor:
    return torch.stack([fn(g) for g in gens])


def _scale(x: torch.Tensor, reference_size: int | None) -> float:
    return 1.0 if reference_size is None else min(x.shape[-2:]) / float(reference_size)


# ---------------------------------------------------------------------------------------------- noise
class GaussianNoise(Perturbation):
    """``x + N(0, std^2)`` per pixel and channel, clipped (ImageNet-C ``gaussian_noise``)."""

    family, random = "gaussian_noise", True

    def __init__(self, std: float, seed: int = 0, severity: int | None = None, family: str | None = None):
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        super().__init__({"std": float(std)}, severity, seed)
        self.family = family or self.family

    @property
    def is_identity(self) -> bool:
        return self.params["std"] == 0

    def _apply(self, x, gens, ids):
        noise = _per_image(gens, lambda g: torch.randn(x.shape[1:], generator=g, device=x.device))
        return x + self.params["std"] * noise


class ShotNoise(Perturbation):
    """Poisson photon noise: ``Poisson(x * rate) / rate`` (ImageNet-C ``shot_noise``; lower rate = worse)."""

    family, random = "shot_noise", True

    def __init__(self, rate: float, seed: int = 0, severity: int | None = None):
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        super().__init__({"rate": float(rate)}, severity, seed)

    def _apply(self, x, gens, ids):
        c = self.params["rate"]
        return torch.stack([torch.poisson(xi * c, generator=g) for xi, g in zip(x, gens)]) / c


class ImpulseNoise(Perturbation):
    """Salt and pepper: each value is replaced with probability ``amount`` by 0 or 1 (equally likely),
    independently per channel, as ``skimage.util.random_noise(mode="s&p")`` (ImageNet-C ``impulse_noise``)."""

    family, random = "impulse_noise", True

    def __init__(self, amount: float, seed: int = 0, severity: int | None = None):
        if not 0 <= amount <= 1:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        super().__init__({"amount": float(amount)}, severity, seed)

    def _apply(self, x, gens, ids):
        u = _per_image(gens, lambda g: torch.rand((2, *x.shape[1:]), generator=g, device=x.device))
        hit, salt = u[:, 0] < self.params["amount"], u[:, 1] < 0.5
        return torch.where(hit, salt.to(x.dtype), x)


class SpeckleNoise(Perturbation):
    """Multiplicative noise ``x + x * N(0, std^2)`` (ImageNet-C ``speckle_noise``)."""

    family, random = "speckle_noise", True

    def __init__(self, std: float, seed: int = 0, severity: int | None = None):
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        super().__init__({"std": float(std)}, severity, seed)

    def _apply(self, x, gens, ids):
        noise = _per_image(gens, lambda g: torch.randn(x.shape[1:], generator=g, device=x.device))
        return x + x * self.params["std"] * noise


# ---------------------------------------------------------------------------------------------- blur
def _pad(x: torch.Tensor, p: int, mode: str = "reflect") -> torch.Tensor:
    """Pad the last two dims by ``p``; reflect (= OpenCV's REFLECT_101) needs ``p < side``, else replicate."""
    if p == 0:
        return x
    if mode == "reflect" and p >= min(x.shape[-2:]):
        mode = "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    r = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def _border_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Indices outside ``0..n-1`` mapped back: ``replicate`` clamps, ``reflect`` mirrors without repeating the
    edge (OpenCV's REFLECT_101, torch's ``reflect``)."""
    if mode == "replicate" or n == 1:
        return np.clip(i, 0, n - 1)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


@lru_cache(maxsize=128)
def _filter_matrix(n: int, taps: tuple[float, ...], mode: str) -> torch.Tensor:
    """``(n, n)`` matrix ``M`` with ``(M @ v)[i] = sum_k taps[k] * v[border(i + k - r)]``: a same-size 1-D
    correlation with the border handling folded in (a banded matrix; a matmul is fast on every device)."""
    r = len(taps) // 2
    m = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for k, t in enumerate(taps):
        np.add.at(m, (rows, _border_index(rows + k - r, n, mode)), t)
    return torch.from_numpy(m).float()


def _separable(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    """Same-size separable filtering with the 1-D kernel ``k`` along H and W (borders: ``mode``)."""
    taps = tuple(float(v) for v in k)
    mh = _filter_matrix(x.shape[-2], taps, mode).to(x.device, x.dtype)
    mw = _filter_matrix(x.shape[-1], taps, mode).to(x.device, x.dtype)
    return mh @ x @ mw.T


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """OpenCV ``filter2D`` (correlation, same size) of every channel with one odd-sized 2-D ``kernel``.

    Borders: ``reflect`` (OpenCV's default BORDER_REFLECT_101) or ``replicate``. Large kernels go through
    the FFT (exact to float rounding), 3x3 ones through a depthwise convolution.
    """
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or kh != kw:
        raise ValueError(f"filter2d needs a square odd-sized kernel, got {tuple(kernel.shape)}")
    p = kh // 2
    k = kernel.to(x.device, x.dtype)
    xp = _pad(x, p, mode)
    if kh <= 3:  # depthwise convolution is slow on CPUs beyond a few taps; the FFT costs the same for any size
        c = x.shape[1]
        return F.conv2d(xp, k.expand(c, 1, kh, kw), groups=c)
    hp, wp = xp.shape[-2:]
    spec = torch.fft.rfft2(xp, s=(hp, wp)) * torch.fft.rfft2(torch.flip(k, (0, 1)), s=(hp, wp))
    y = torch.fft.irfft2(spec, s=(hp, wp))
    return y[..., kh - 1 : kh - 1 + x.shape[-2], kw - 1 : kw - 1 + x.shape[-1]]


class GaussianBlur(Perturbation):
    """Gaussian blur with ``sigma`` (pixels) or a ``kernel_size`` (OpenCV/torchvision's rule
    ``sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8``); scipy/skimage taps (radius ``4 sigma``), replicated
    borders as ``skimage.filters.gaussian`` (ImageNet-C ``gaussian_blur``). ``reference_size`` scales sigma."""

    family = "gaussian_blur"

    def __init__(self, sigma: float | None = None, kernel_size: int | None = None, severity: int | None = None,
                 reference_size: int | None = None):
        if (sigma is None) == (kernel_size is None):
            raise ValueError("give exactly one of sigma and kernel_size")
        if kernel_size is not None:
            if kernel_size < 1 or kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
            params = {"kernel_size": int(kernel_size)}
        else:
            if not sigma >= 0:
                raise ValueError(f"sigma must be >= 0, got {sigma}")
            params = {"sigma": float(sigma), "reference_size": reference_size}
        super().__init__(params, severity)

    @property
    def is_identity(self) -> bool:
        return self.params.get("kernel_size") == 1 or self.params.get("sigma") == 0

    def _apply(self, x, gens, ids):
        if "kernel_size" in self.params:  # exactly that many taps, like cv2.GaussianBlur(ksize=(k, k))
            k = self.params["kernel_size"]
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
            t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
            taps = torch.exp(-0.5 * (t / sigma) ** 2)
            return _separable(x, (taps / taps.sum()).float(), "reflect")
        sigma = self.params["sigma"] * _scale(x, self.params["reference_size"])
        return _separable(x, gaussian_kernel1d(sigma), "replicate")


def _gaussian2d_cv(k: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(k, (ksize, ksize), sigma) with BORDER_REFLECT_101, in float64."""
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    p = ksize // 2
    kp = np.pad(k, p, mode="reflect")
    out = np.zeros_like(k)
    for i in range(ksize):
        for j in range(ksize):
            out += g[i] * g[j] * kp[i : i + k.shape[0], j : j + k.shape[1]]
    return out


@lru_cache(maxsize=64)
def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's defocus disk: an aliased disk of ``radius`` (grid -8..8, or -r..r beyond 8), normalised,
    smoothed by a 3x3 (5x5 beyond 8) Gaussian of sigma ``alias_blur``. A non-integer radius gets an
    area-coverage (anti-aliased, 16x16 supersampled) disk instead, so small scaled radii still blur."""
    if radius <= 0:
        raise ValueError(f"disk radius must be > 0, got {radius}")
    integer = abs(radius - round(radius)) < 1e-9
    half = 8 if radius <= 8 else math.ceil(radius)
    grid = np.arange(-half, half + 1, dtype=np.float64)
    if integer:
        X, Y = np.meshgrid(grid, grid)
        disk = (X**2 + Y**2 <= radius**2).astype(np.float64)
    else:
        sub = (np.arange(16) + 0.5) / 16 - 0.5
        fine = (grid[:, None] + sub[None, :]).reshape(-1)
        X, Y = np.meshgrid(fine, fine)
        disk = (X**2 + Y**2 <= radius**2).astype(np.float64).reshape(len(grid), 16, len(grid), 16).mean(axis=(1, 3))
    disk /= disk.sum()
    k = _gaussian2d_cv(disk, 3 if radius <= 8 else 5, alias_blur)
    # trim all-zero borders (the aliased grid is -8..8 even for radius 3); values are unchanged
    nz = np.nonzero(np.abs(k).max(axis=0) > 0)[0]
    t = min(int(nz[0]), len(k) - 1 - int(nz[-1])) if len(nz) else 0
    k = k[t : len(k) - t, t : len(k) - t]
    return torch.from_numpy(k).float()


class DefocusBlur(Perturbation):
    """Convolution with ImageNet-C's defocus disk (:func:`defocus_kernel`), reflected borders as
    ``cv2.filter2D``. ``radius`` is scaled by ``min(H, W) / reference_size``."""

    family = "defocus_blur"

    def __init__(self, radius: float, alias_blur: float = 0.5, severity: int | None = None,
                 reference_size: int | None = REFERENCE_SIZE):
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        super().__init__({"radius": float(radius), "alias_blur": float(alias_blur),
                          "reference_size": reference_size}, severity)

    def _apply(self, x, gens, ids):
        r = self.params["radius"] * _scale(x, self.params["reference_size"])
        return filter2d(x, defocus_kernel(round(r, 6), self.params["alias_blur"]), "reflect")


class MotionBlur(Perturbation):
    """``imagecorruptions``' motion blur: the average of copies shifted along a random direction
    (angle uniform in [-45, 45] degrees per image), weighted by a one-sided Gaussian of ``sigma`` over
    ``2 * radius + 1`` steps, borders replicated. ``radius``/``sigma`` scale with ``reference_size``."""

    family, random = "motion_blur", True

    def __init__(self, radius: float, sigma: float, seed: int = 0, severity: int | None = None,
                 reference_size: int | None = REFERENCE_SIZE):
        if not (radius > 0 and sigma > 0):
            raise ValueError(f"radius and sigma must be > 0, got {radius}, {sigma}")
        super().__init__({"radius": float(radius), "sigma": float(sigma), "reference_size": reference_size},
                         severity, seed)

    def angles(self, gens) -> list[float]:
        return [float(torch.rand(1, generator=g, device=g.device).item()) * 90.0 - 45.0 for g in gens]

    def _apply(self, x, gens, ids):
        s = _scale(x, self.params["reference_size"])
        width = 2 * max(1, round(self.params["radius"] * s)) + 1
        sigma = self.params["sigma"] * s
        t = np.arange(width, dtype=np.float64)
        w = np.exp(-(t**2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
        w /= w.sum()
        B, C, H, W = x.shape
        ang = np.deg2rad(np.asarray(self.angles(gens)))
        rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        flat = x.reshape(B, C, H * W)
        out = torch.zeros_like(flat)
        for i in range(width):
            dy = -np.ceil(i * np.sin(ang) - 0.5).astype(np.int64)  # (B,) shift of step i, per image
            dx = -np.ceil(i * np.cos(ang) - 0.5).astype(np.int64)
            ri = (rows[None, :] - torch.as_tensor(dy, device=x.device)[:, None]).clamp_(0, H - 1)  # (B, H)
            ci = (cols[None, :] - torch.as_tensor(dx, device=x.device)[:, None]).clamp_(0, W - 1)  # (B, W)
            idx = (ri[:, :, None] * W + ci[:, None, :]).reshape(B, 1, H * W).expand(B, C, H * W)
            out.add_(flat.gather(2, idx), alpha=float(w[i]))
        return out.reshape(B, C, H, W)


# ---------------------------------------------------------------------------------------------- colour
class Brightness(Perturbation):
    """Add ``delta`` to the HSV value channel (clipped), keeping hue and saturation (ImageNet-C)."""

    family = "brightness"

    def __init__(self, delta: float, severity: int | None = None):
        super().__init__({"delta": float(delta)}, severity)

    @property
    def is_identity(self) -> bool:
        return self.params["delta"] == 0

    def _apply(self, x, gens, ids):
        v = x.amax(dim=1, keepdim=True)
        v2 = (v + self.params["delta"]).clamp(0.0, 1.0)
        # RGB scales linearly with V at fixed hue/saturation; black (V = 0) has S = 0 and becomes grey V'
        return torch.where(v > 0, x * (v2 / v.clamp_min(1e-12)), v2.expand_as(x))


class Contrast(Perturbation):
    """``(x - m) * factor + m`` with ``m`` the per-image, per-channel mean (ImageNet-C ``contrast``)."""

    family = "contrast"

    def __init__(self, factor: float, severity: int | None = None):
        if not factor >= 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        super().__init__({"factor": float(factor)}, severity)

    @property
    def is_identity(self) -> bool:
        return self.params["factor"] == 1

    def _apply(self, x, gens, ids):
        m = x.mean(dim=(2, 3), keepdim=True)
        return (x - m) * self.params["factor"] + m


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    v, _ = x.max(dim=1)
    mn, _ = x.min(dim=1)
    d = v - mn
    s = torch.where(v > 0, d / v.clamp_min(1e-12), torch.zeros_like(v))
    dd = d.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / dd, torch.where(v == g, 2.0 + (b - r) / dd, 4.0 + (r - g) / dd))
    h = torch.where(d > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i[:, None]).squeeze(1)
    g = torch.stack([t, v, v, q, p, p], 1).gather(1, i[:, None]).squeeze(1)
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i[:, None]).squeeze(1)
    return torch.stack([r, g, b], dim=1)


class Saturate(Perturbation):
    """HSV saturation ``s * a + b`` (clipped), as ImageNet-C's ``saturate``."""

    family = "saturate"

    def __init__(self, a: float, b: float = 0.0, severity: int | None = None):
        super().__init__({"a": float(a), "b": float(b)}, severity)

    def _apply(self, x, gens, ids):
        hsv = _rgb_to_hsv(x)
        hsv[:, 1] = (hsv[:, 1] * self.params["a"] + self.params["b"]).clamp(0, 1)
        return _hsv_to_rgb(hsv)


# ---------------------------------------------------------------------------------------------- JPEG
_LUMA_Q = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=torch.float64).view(8, 8)
_CHROMA_Q = torch.tensor([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32)], dtype=torch.float64).view(8, 8)


def jpeg_quant_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's ``jpeg_set_quality``: Annex K tables scaled by ``5000/q`` (q < 50) or ``200 - 2q``,
    rounded, clamped to 1..255 (baseline)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    f = lambda t: torch.clamp(torch.div(t * scale + 50, 100, rounding_mode="floor"), 1, 255)
    return f(_LUMA_Q).float(), f(_CHROMA_Q).float()


@lru_cache(maxsize=1)
def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.float()  # orthonormal DCT-II: coefficients = M @ block @ M.T


def _blockwise(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn`` to every 8x8 block of ``x`` (..., H, W) with H, W multiples of 8."""
    *lead, H, W = x.shape
    b = x.reshape(*lead, H // 8, 8, W // 8, 8).transpose(-3, -2)
    return fn(b).transpose(-3, -2).reshape(*lead, H, W)


class JPEG(Perturbation):
    """Baseline JPEG compression at ``quality`` (ImageNet-C ``jpeg_compression``), in torch on any device.

    Steps as libjpeg with Pillow's defaults: 8-bit RGB -> YCbCr (JFIF), 4:2:0 chroma (2x2 means), edge
    padding to 16 px, 8x8 orthonormal DCT, quantisation with :func:`jpeg_quant_tables`, dequantisation,
    inverse DCT, triangle ("fancy") chroma upsampling, YCbCr -> RGB rounded to 8 bits.
    """

    family = "jpeg_compression"

    def __init__(self, quality: int, severity: int | None = None):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        super().__init__({"quality": int(quality)}, severity)

    def _apply(self, x, gens, ids):
        H, W = x.shape[-2:]
        dev = x.device
        ql, qc = (t.to(dev) for t in jpeg_quant_tables(self.params["quality"]))
        m = _dct_matrix().to(dev)
        rgb = torch.round(x * 255.0)
        Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
        rgb = F.pad(rgb, (0, Wp - W, 0, Hp - H), mode="replicate")
        r, g, b = rgb.unbind(1)
        y = torch.round(0.299 * r + 0.587 * g + 0.114 * b)
        cb = torch.round(-0.168735892 * r - 0.331264108 * g + 0.5 * b + 128)
        cr = torch.round(0.5 * r - 0.418687589 * g - 0.081312411 * b + 128)
        chroma = torch.round(F.avg_pool2d(torch.stack([cb, cr], 1), 2))

        def codec(plane, q):
            def f(blk):
                coef = m @ (blk - 128.0) @ m.T
                coef = torch.round(coef / q) * q
                return m.T @ coef @ m + 128.0

            return torch.clamp(torch.round(_blockwise(plane, f)), 0, 255)

        y = codec(y, ql)
        chroma = codec(chroma, qc)
        chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
        cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
        out = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], 1)
        return torch.clamp(torch.round(out), 0, 255)[..., :H, :W] / 255.0


# ---------------------------------------------------------------------------------------------- pixelate
@lru_cache(maxsize=64)
def pil_box_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``(out, in)`` weights of Pillow's BOX resampling (``precompute_coeffs`` in Resample.c)."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / fscale
            if -0.5 < t <= 0.5:
                m[xx, xi] = 1.0
        m[xx] /= m[xx].sum()
    return m.float()


class Pixelate(Perturbation):
    """Box-downsample to ``int(side * factor)`` then nearest-upsample back (ImageNet-C ``pixelate``,
    Pillow's BOX and NEAREST resampling)."""

    family = "pixelate"

    def __init__(self, factor: float, severity: int | None = None):
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        super().__init__({"factor": float(factor)}, severity)

    @property
    def is_identity(self) -> bool:
        return self.params["factor"] == 1

    def _apply(self, x, gens, ids):
        H, W = x.shape[-2:]
        h, w = max(1, int(H * self.params["factor"])), max(1, int(W * self.params["factor"]))
        mh, mw = pil_box_matrix(H, h).to(x.device), pil_box_matrix(W, w).to(x.device)
        small = mh @ x @ mw.T
        return F.interpolate(small, size=(H, W), mode="nearest-exact")


# ---------------------------------------------------------------------------------------------- occlusion
class ObjectMasks:
    """Per-image object masks at a model's input geometry, from a manifest's annotations.

    ``masks(ids, (H, W))`` -> bool ``(B, H, W)`` tensor: for each image the mask of its largest object
    *as the model sees it* (annotations via :func:`vlnb.data.get_annotations`, mapped through
    ``preprocess.resize_mask``: the same resize and crop as the pixels). An image without objects (or
    whose objects are all cropped away) gets an all-False mask; :class:`Occlusion` then falls back to
    the centre and counts it in :attr:`missing`.
    """

    key = "largest-object-mask"

    def __init__(self, manifest, preprocess):
        self.manifest, self.preprocess = manifest, preprocess
        self._cache: dict[str, np.ndarray] = {}
        self.missing: set[str] = set()

    def one(self, image_id) -> np.ndarray:
        k = _id_text(image_id)
        if k not in self._cache:

            best = None
            for o in get_annotations(self.manifest, image_id):
                if o.mask is None:
                    continue
                m = self.preprocess.resize_mask(o.mask)
                if best is None or m.sum() > best.sum():
                    best = m
            if best is None or not best.any():
                self.missing.add(k)
                size = self.preprocess.output_size
                best = np.zeros(size if size else (1, 1), dtype=bool) if best is None else best
            self._cache[k] = best
        return self._cache[k]

    def __call__(self, ids: Sequence, size: tuple[int, int]) -> torch.Tensor:
        out = []
        for i in ids:
            m = self.one(i)
            if m.shape != tuple(size):
                if m.any():
                    raise ValueError(f"mask of image {i!r} is {m.shape}, the pixels are {tuple(size)}: the masks "
                                     "were made for another preprocessing")
                m = np.zeros(size, dtype=bool)
            out.append(torch.from_numpy(np.ascontiguousarray(m)))
        return torch.stack(out)


def _object_anchor(mask: torch.Tensor) -> tuple[int, int] | None:
    """The mask pixel nearest the mask's centroid (always inside the mask), or None for an empty mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    cy, cx = ys.float().mean(), xs.float().mean()
    j = int(torch.argmin((ys.float() - cy) ** 2 + (xs.float() - cx) ** 2))
    return int(ys[j]), int(xs[j])


class Occlusion(Perturbation):
    """A square of grey (``fill``) pasted on the image.

    ``size``: side in pixels (int) or as a fraction of ``min(H, W)`` (float <= 1). ``mode``:
    ``"random"`` (uniform position, seeded per image), ``"centre"``, or ``"object"``: centred on the pixel
    of the largest object's mask nearest its centroid (``masks``: an :class:`ObjectMasks`), shifted to
    stay inside the image; images without an object mask get the centre patch.
    """

    family = "occlusion"

    def __init__(self, size: float, mode: str = "random", fill: float = 0.5, seed: int = 0,
                 severity: int | None = None, masks: Callable | None = None, family: str | None = None):
        if mode not in OCCLUSION_MODES:
            raise ValueError(f"occlusion mode must be one of {OCCLUSION_MODES}, got {mode!r}")
        if isinstance(size, bool) or not size > 0 or (isinstance(size, float) and size > 1):
            raise ValueError(f"size must be pixels (int >= 1) or a fraction of the side in (0, 1], got {size!r}")
        if mode == "object" and masks is None:
            raise ValueError("mode='object' needs masks= (an ObjectMasks built from the data set's annotations)")
        if not 0 <= fill <= 1:
            raise ValueError(f"fill must be in [0, 1], got {fill}")
        params = {"size": size, "mode": mode, "fill": float(fill)}
        if mode == "object":
            params["masks"] = getattr(masks, "key", type(masks).__name__)
        super().__init__(params, severity, seed)
        self.random = mode == "random"
        self.family = family or f"occlusion_{mode}"
        self.masks = masks
        self.last_boxes: list[tuple[int, int, int, int]] = []  # (top, left, h, w) of the last call, for tests

    def side(self, H: int, W: int) -> int:
        s = self.params["size"]
        side = round(s * min(H, W)) if isinstance(s, float) else int(s)
        return max(1, min(side, H, W))

    def _apply(self, x, gens, ids):
        B, _, H, W = x.shape
        s = self.side(H, W)
        mode = self.params["mode"]
        if mode == "object":
            masks = self.masks(ids if ids is not None else list(range(B)), (H, W))
        boxes = []
        for b in range(B):
            if mode == "random":
                g = gens[b]
                top = int(torch.randint(0, H - s + 1, (1,), generator=g, device=g.device).item())
                left = int(torch.randint(0, W - s + 1, (1,), generator=g, device=g.device).item())
            else:
                anchor = _object_anchor(masks[b]) if mode == "object" else None
                cy, cx = anchor if anchor is not None else (H // 2, W // 2)
                top = min(max(cy - s // 2, 0), H - s)
                left = min(max(cx - s // 2, 0), W - s)
            boxes.append((top, left, s, s))
        self.last_boxes = boxes
        keep = torch.ones(B, 1, H, W, device=x.device, dtype=x.dtype)
        for b, (top, left, h, w) in enumerate(boxes):
            keep[b, :, top : top + h, left : left + w] = 0
        return x * keep + self.params["fill"] * (1 - keep)


# ---------------------------------------------------------------------------------------------- factory
def corruption(name: str, severity: int, seed: int = 0, reference_size: int | None = REFERENCE_SIZE,
               masks: Callable | None = None, fill: float = 0.5) -> Perturbation:
    """Family ``name`` (:data:`CORRUPTIONS`) at ``severity`` 0-5 (0 = identity) with ImageNet-C's constants.

    ``seed`` drives the random families; ``reference_size`` scales spatial constants (module docstring);
    ``masks`` (an :class:`ObjectMasks`) is needed by ``occlusion_object``; ``fill`` is the occluder's grey.
    """
    if name not in SEVERITY_CONSTANTS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
        raise ValueError(f"severity must be an int in 0..5 (0 = clean), got {severity!r}")
    severity = int(severity)
    if severity == 0:
        return Identity(name)
    c = SEVERITY_CONSTANTS[name][severity - 1]
    kw = {"severity": severity}
    if name == "gaussian_noise":
        return GaussianNoise(c, seed=seed, **kw)
    if name == "shot_noise":
        return ShotNoise(c, seed=seed, **kw)
    if name == "impulse_noise":
        return ImpulseNoise(c, seed=seed, **kw)
    if name == "speckle_noise":
        return SpeckleNoise(c, seed=seed, **kw)
    if name == "gaussian_blur":
        return GaussianBlur(sigma=c, reference_size=reference_size, **kw)
    if name == "defocus_blur":
        return DefocusBlur(c[0], c[1], reference_size=reference_size, **kw)
    if name == "motion_blur":
        return MotionBlur(c[0], c[1], seed=seed, reference_size=reference_size, **kw)
    if name == "brightness":
        return Brightness(c, **kw)
    if name == "contrast":
        return Contrast(c, **kw)
    if name == "saturate":
        return Saturate(c[0], c[1], **kw)
    if name == "jpeg_compression":
        return JPEG(c, **kw)
    if name == "pixelate":
        return Pixelate(c, **kw)
    mode = name.split("_", 1)[1]
    return Occlusion(float(c), mode=mode, fill=fill, seed=seed, masks=masks, family=name, **kw)


__all__ = [
    "CORRUPTIONS", "JPEG", "OCCLUSION_MODES", "REFERENCE_SIZE", "SEVERITY_CONSTANTS", "Brightness", "Contrast",
    "DefocusBlur", "GaussianBlur", "GaussianNoise", "Identity", "ImpulseNoise", "MotionBlur", "ObjectMasks",
    "Occlusion", "Perturbation", "Pixelate", "Saturate", "ShotNoise", "SpeckleNoise", "corruption",
    "defocus_kernel", "filter2d", "image_seeds", "jpeg_quant_tables", "pil_box_matrix",
]
