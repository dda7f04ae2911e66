"""Real photos for the data tests: crops of the two photos that scikit-learn ships."""

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

PHOTOS = load_sample_images().images            # two 427x640 RGB photos, shipped by sklearn


def photo_folder(root, per_class=40, seed=0):
    """Two classes (one per photo) of JPEG crops of mixed sizes, plus a PNG, a grayscale
    JPEG, an RGBA PNG, a palette GIF and a CMYK JPEG in each class."""
    rng = np.random.default_rng(seed)
    for label, photo in enumerate(PHOTOS):
        folder = root / f"photo{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            height, width = rng.integers(60, 200), rng.integers(60, 200)
            top, left = rng.integers(0, 427 - height), rng.integers(0, 640 - width)
            crop = Image.fromarray(photo[top:top + height, left:left + width])
            crop.save(folder / f"crop{i:03d}.jpg", quality=90)
        piece = Image.fromarray(photo[100:228, 200:328])
        piece.save(folder / "piece.png")
        piece.convert("L").save(folder / "gray.jpg")
        piece.convert("RGBA").save(folder / "alpha.png")
        piece.convert("P").save(folder / "palette.gif")
        piece.convert("CMYK").save(folder / "cmyk.jpg")
    return root
