"""Image sizing and training augmentation on the host, with NumPy and Pillow (no TensorFlow).

`data.augment`:
  crop_flip       zero-pad by `data.crop_padding`, random crop back to the image size, random horizontal flip
                  (flips only with `data.flip`, as for inception_crop)
                  (the CIFAR recipe; the images of a batch must share one size)
  inception_crop  random-resized crop (area fraction in `data.crop_scale`, aspect ratio 3/4..4/3, torchvision's
                  algorithm) to `data.image_size` plus a random horizontal flip, from the full-size image
`data.image_size`: every image is seen at size x size: with inception_crop, resized so its shorter side is
size / 0.875 and centre-cropped (the evaluation view); otherwise resized whole.

The random draws of step s come from `np.random.default_rng([seed, 1, s])`, made for the whole global batch and
then cut to this process's rows: the same (seed, step) gives the same batch on any number of processes, a
resumed run reads bit-identical batches, and an example seen again in a later epoch gets new draws.
"""
from __future__ import annotations

import numpy as np

from ptft_jax.dataset import Dataset, Split

EVAL_CROP = 0.875  # the evaluation view keeps the central 87.5% of the shorter side


def resize(image: np.ndarray, size: int, box=None) -> np.ndarray:
    """The `box` (left, top, right, bottom; default the whole image) of an HxWxC uint8 image, resized to size^2."""
    box = box or (0, 0, image.shape[1], image.shape[0])
    c = image.shape[-1]
    chans = [image] if c in (3, 4) else [image[..., i] for i in range(c)]
    from PIL import Image  # imported here: `import ptft_jax` needs no Pillow
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((size, size), Image.BILINEAR, box=box))
           for x in chans]
    return out[0] if c in (3, 4) else np.stack(out, -1)


def centre_box(h: int, w: int, fraction: float = EVAL_CROP):
    side = min(h, w) * fraction
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def inception_box(h: int, w: int, u: np.ndarray, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box from 40 uniform draws `u` (10 tries of area, ratio, top, left)."""
    log_ratio = np.log(ratio)
    for a, r, y, x in u.reshape(10, 4):
        area = h * w * (scale[0] + a * (scale[1] - scale[0]))
        aspect = np.exp(log_ratio[0] + r * (log_ratio[1] - log_ratio[0]))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(y * (h - ch + 1)), int(x * (w - cw + 1))
            return left, top, left + cw, top + ch
    cw, ch = w, h  # fallback: the whole image, its aspect ratio clamped to the range, centred
    if w / h < ratio[0]:
        ch = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        cw = int(round(h * ratio[1]))
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """[N,H,W,C] images zero-padded by `pad`, cropped at `offsets` [N,2] (top, left), flipped where `flips`."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = offsets[:, :1] + np.arange(h)
    cols = offsets[:, 1:] + np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


class SizedRecords:
    """A split's examples seen at `size` (the evaluation view); `raw(i)` is the example as stored."""

    def __init__(self, split: Split, size: int, crop: bool):
        self.split, self.size, self.crop = split, size, crop

    def __len__(self):
        return len(self.split)

    def raw(self, i):
        s = self.split
        return {k: v[i] for k, v in s.arrays.items()} if s.arrays is not None else s.records[int(i)]

    def __getitem__(self, i):
        r = self.raw(i)
        image = np.asarray(r["image"])
        box = centre_box(*image.shape[:2]) if self.crop else None
        return {"image": resize(image, self.size, box), "label": np.int32(r["label"])}


def sized(ds: Dataset, cfg) -> Dataset:
    """The dataset with every split seen at `cfg.image_size` (records computed on access)."""
    crop = cfg.augment == "inception_crop"
    for name in ("train", "test", "val"):
        split = getattr(ds, name)
        if split is None:
            continue
        setattr(ds, name, Split(len(split), records=SizedRecords(split, int(cfg.image_size), crop)))
    return ds


class TrainAugment:
    """(split, global batch indices, this process's rows, step) -> this process's augmented batch."""

    def __init__(self, cfg, seed: int):
        self.kind, self.seed, self.size = cfg.augment, int(seed), cfg.image_size
        self.pad, self.scale, self.flip = int(cfg.crop_padding), tuple(cfg.crop_scale), bool(cfg.flip)

    def __call__(self, split: Split, indices: np.ndarray, share: slice, step: int) -> dict:
        rng = np.random.default_rng([self.seed, 1, int(step)])
        n = len(indices)
        if self.kind == "crop_flip":
            offsets, flips = rng.integers(0, 2 * self.pad + 1, (n, 2))[share], (rng.random(n) < 0.5)[share] & self.flip
            batch = split.take(indices[share])
            batch["image"] = crop_flip(batch["image"], offsets, flips, self.pad)
            return batch
        u = rng.random((n, 41))[share]
        images, labels = [], []
        for i, draws in zip(indices[share], u):
            r = split.records.raw(i) if hasattr(split.records, "raw") else split.take(np.asarray([i]))
            image = np.asarray(r["image"]).reshape(np.shape(r["image"])[-3:])
            image = resize(image, self.size, inception_box(*image.shape[:2], draws[:40], self.scale))
            images.append(image[:, ::-1] if self.flip and draws[40] < 0.5 else image)
            labels.append(np.asarray(r["label"]).reshape(()))
        return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


def train_augment(cfg, seed: int) -> TrainAugment | None:
    return TrainAugment(cfg, seed) if cfg.augment else None
