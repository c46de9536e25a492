"""Which perceptual hash separates near-duplicates better on generated images: imagehash's
phash, imagehash's dhash, or the dHash diffspec computed itself before 0.2 (the baseline).

    python bench/near_duplicate_hashes.py              # 12 images per class, 64 px
    python bench/near_duplicate_hashes.py --per-class 24 --size 32

Makes ``--per-class`` images of two classes with the embedded digits model (in a temp folder),
then per hash: the Hamming distance of every image to five perturbed copies of itself (Gaussian
noise sigma 6, JPEG quality 75, +10% brightness, a 1 px shift, a round trip through 3/4 size)
and between every two distinct images of one class. Prints, at ``--max-hamming``, the copies
missed and the distinct pairs taken for duplicates, the mean distances, and each hash's errors
as a ratio to the baseline's. The figures in docs/filters.md come from the default run.
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
import textwrap
from pathlib import Path

import numpy as np


def old_dhash(image, size: int = 8) -> int:
    """The dHash of diffspec 0.1's near_duplicate filter."""
    small = np.asarray(image.convert("L").resize((size + 1, size), resample=2), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def perturbed(image, rng: np.random.Generator) -> list:
    from PIL import Image, ImageEnhance

    a = np.asarray(image, dtype=np.int16)
    noise = Image.fromarray(np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=75)
    jpeg = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    bright = ImageEnhance.Brightness(image).enhance(1.1)
    shift = Image.fromarray(np.roll(np.asarray(image), 1, axis=1))
    w, h = image.size
    small = image.resize((w * 3 // 4, h * 3 // 4), Image.BILINEAR).resize(image.size, Image.BILINEAR)
    return [noise, jpeg, bright, shift, small]


def main() -> None:
    import imagehash
    from PIL import Image

    from diffspec.catalog.store import Catalog
    from diffspec.project import Project

    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-hamming", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(
            textwrap.dedent(
                f"""\
                version: 1
                dataset: hashes
                output: out
                models: {{digits: {{source: builtin:digits, scheduler: ddim}}}}
                defaults: {{model: digits, size: [{args.size}, {args.size}], steps: 10, guidance: 3.0, seed: 3}}
                budget: {{devices: cpu, max_batch: 32}}
                vars: {{weight: [thin, thick]}}
                classes:
                  three: {{target: {args.per_class}, prompt: "a {{weight}} handwritten three"}}
                  seven: {{target: {args.per_class}, prompt: "a {{weight}} handwritten seven"}}
                """
            )
        )
        project = Project(spec)
        project.apply(progress=False)
        images: dict[str, list] = {}
        for row in Catalog(project.output).live_images(["class_name", "path"]).to_pylist():
            with Image.open(project.output / row["path"]) as im:
                images.setdefault(row["class_name"], []).append(im.convert("RGB"))
    hashers = {
        "imagehash phash": lambda im: int(str(imagehash.phash(im)), 16),
        "imagehash dhash": lambda im: int(str(imagehash.dhash(im)), 16),
        "diffspec 0.1 dHash (baseline)": old_dhash,
    }
    errors = {}
    for name, hasher in hashers.items():
        rng = np.random.default_rng(0)
        near, far = [], []
        for ims in images.values():
            hashes = [hasher(im) for im in ims]
            for im, h in zip(ims, hashes):
                near += [(h ^ hasher(p)).bit_count() for p in perturbed(im, rng)]
            far += [(a ^ b).bit_count() for a, b in itertools.combinations(hashes, 2)]
        n, f = np.array(near), np.array(far)
        missed, false = int((n > args.max_hamming).sum()), int((f <= args.max_hamming).sum())
        errors[name] = missed + false
        print(
            f"{name:30s} copies missed {missed}/{len(n)}, distinct pairs taken for duplicates {false}/{len(f)}, "
            f"mean distance copy {n.mean():.1f} / distinct {f.mean():.1f}"
        )
    base = errors["diffspec 0.1 dHash (baseline)"]
    for name, count in errors.items():
        print(f"{name:30s} errors / baseline: {count / base if base else float('nan'):.2f}")


if __name__ == "__main__":
    main()
