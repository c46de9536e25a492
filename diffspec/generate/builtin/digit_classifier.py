"""A handwritten-digit classifier for checking images of the ``builtin:digits`` model: the
training script judges its checkpoints with it, and the `classifier` filter stage its images.

It is a scikit-learn SVC (RBF kernel, ``gamma=0.001, C=10``) with sigmoid (Platt)
calibrated probabilities (``CalibratedClassifierCV``, unshuffled 5-fold, so
deterministic), fitted at first use on *all* of ``sklearn.datasets.load_digits``
(1,797 real 8x8 digits; 97% accuracy under unshuffled 5-fold cross-validation,
which holds out whole writers' blocks) and cached for the life of the process.  It does not import torch.

Images are brought to the form of the training data before classifying: gray scale,
area-averaged (box filter) down to 8x8 -- exactly how the data set's 32x32 bitmaps were
reduced to 8x8 -- and scaled to 0..16 with ink high.  A dark-ink-on-light image (bright
border) is inverted first, so both ink conventions work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = ["classify", "to_digit_features", "classifier"]


@functools.lru_cache(maxsize=1)
def classifier():
    """The fitted classifier (deterministic; fitted once per process, about a second)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    data = load_digits()
    # unshuffled stratified 5-fold calibration: deterministic
    model = CalibratedClassifierCV(SVC(kernel="rbf", gamma=0.001, C=10.0), method="sigmoid", cv=5, ensemble=False)
    model.fit(data.data, data.target)
    return model


def to_digit_features(images: Sequence[Image.Image]) -> np.ndarray:
    """``(n, 64)`` float array of 8x8 images in 0..16 (ink high), like ``load_digits().data``."""
    import numpy as np
    from PIL import Image

    rows = []
    for im in images:
        gray = im.convert("L")
        if gray.size != (8, 8):
            gray = gray.resize((8, 8), resample=Image.Resampling.BOX)
        a = np.asarray(gray, dtype=np.float64) / 255.0
        border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
        if border.mean() > 0.5:  # dark ink on light paper
            a = 1.0 - a
        rows.append(np.round(a * 16.0).reshape(64))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 64)


def classify(images: Sequence[Image.Image]) -> list[tuple[int, float]]:
    """Predicted digit and its probability for each image."""
    if not images:
        return []
    probs = classifier().predict_proba(to_digit_features(images))
    classes = classifier().classes_
    best = probs.argmax(axis=1)
    return [(int(classes[b]), float(p[b])) for b, p in zip(best, probs)]
