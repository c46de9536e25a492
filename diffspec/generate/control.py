"""Input images for img2img, inpaint and ControlNet: loaded, converted and resized to the unit's size.

ControlNet control kinds (``PipelineKey.control``):

* ``canny`` — Canny edges of the image (``cv2.Canny`` with thresholds low/high, default
  100/200 as in the spec's ``input.canny_low``/``canny_high``). The key may carry the
  thresholds as ``canny:LOW:HIGH`` so that they are part of the fingerprint.
* ``depth`` — the image already is a depth map: read as one channel, given as 3 channels.
* ``image`` — the image as is (RGB).

Inpaint masks are read in L mode (white = repaint) and resized with nearest-neighbour so a
binary mask stays binary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffspec.errors import GenerationError

CONTROL_KINDS = ("canny", "depth", "image")
DEFAULT_CANNY = (100, 200)


def parse_control(control: str | None) -> tuple[str, tuple[int, int]]:
    """``"canny"`` / ``"canny:50:150"`` / ``"depth"`` / ``"image"`` → (kind, canny thresholds)."""
    if control is None:
        return "image", DEFAULT_CANNY
    kind, _, rest = control.partition(":")
    if kind not in CONTROL_KINDS:
        raise GenerationError(f"unknown control kind {control!r}; expected one of {', '.join(CONTROL_KINDS)}")
    if not rest:
        return kind, DEFAULT_CANNY
    if kind != "canny":
        raise GenerationError(f"control {control!r}: only canny takes parameters (canny:LOW:HIGH)")
    try:
        low, high = (int(v) for v in rest.split(":"))
    except ValueError:
        raise GenerationError(f"control {control!r}: expected canny:LOW:HIGH with two integers") from None
    if not (0 <= low <= 255 and 0 <= high <= 255):
        raise GenerationError(f"control {control!r}: canny thresholds must be within 0..255")
    return kind, (low, high)


def _open(path: str | Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise GenerationError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise GenerationError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    return image


def load_rgb(path: str | Path, width: int, height: int) -> Image.Image:
    """An input image as RGB, resized to width x height."""
    image = _open(path, "input image").convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def load_mask(path: str | Path, width: int, height: int) -> Image.Image:
    """An inpaint mask in L mode (white = repaint), resized to width x height."""
    mask = _open(path, "mask image").convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return mask


def canny(image: Image.Image, low: int = DEFAULT_CANNY[0], high: int = DEFAULT_CANNY[1]) -> Image.Image:
    """Canny edges of an image as a 3-channel (white edges on black) image."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def control_image(path: str | Path, control: str | None, width: int, height: int) -> Image.Image:
    """The ControlNet conditioning image for an input image, at width x height."""
    kind, (low, high) = parse_control(control)
    if kind == "canny":
        return canny(load_rgb(path, width, height), low, high)
    if kind == "depth":
        depth = _open(path, "depth map")
        if depth.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit / float depth maps → 8 bit
            arr = np.asarray(depth, dtype=np.float64)
            span = float(arr.max() - arr.min()) or 1.0
            depth = Image.fromarray(((arr - arr.min()) / span * 255.0).round().astype(np.uint8))
        depth = depth.convert("L")
        if depth.size != (width, height):
            depth = depth.resize((width, height), Image.Resampling.BICUBIC)
        return depth.convert("RGB")
    return load_rgb(path, width, height)
