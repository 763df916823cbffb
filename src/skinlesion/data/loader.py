"""PyTorch datasets and loaders over a :class:`~skinlesion.data.Dataset`."""

from __future__ import annotations

import os

import numpy as np

from .ham10000 import Dataset

SMALL_SIDE = 64  # datasets of images this small are held decoded in memory


class ImageSet:
    """``(tensor, label, position)`` for the rows ``positions`` of ``ds``, through ``transform``."""

    def __init__(self, ds: Dataset, positions, transform, preload: bool | None = None, seed: int = 0):
        self.ds = ds
        self.seed = int(seed)
        self.positions = np.asarray(positions, int)
        self.transform = transform
        if preload is None:  # tiny images are kept decoded; arrays (npz, memory-mapped cache) are read per item
            preload = ds.arrays is None and native_size(ds) <= SMALL_SIDE
        self.cache = [ds.image(int(p)) for p in self.positions] if preload else None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key):
        """``key``: an index, or ``(epoch, index)`` from :class:`EpochSampler`, which seeds this image's
        augmentation from (seed, epoch, index): the same in any worker, and after a resume."""
        if isinstance(key, tuple):
            import torch

            epoch, i = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch_seed(self.seed, epoch, i))
                return self._item(i)
        return self._item(key)

    def _item(self, i: int):
        img = self.cache[i] if self.cache is not None else self.ds.image(int(self.positions[i]))
        return self.transform(img), int(self.ds.meta["label"].iat[self.positions[i]]), int(self.positions[i])


def epoch_seed(seed: int, epoch: int, index: int = -1) -> int:
    """A seed that depends on (seed, epoch, index) alone, so every epoch's randomness is reproducible.

    ``index``: an image's position (its augmentation), -1 (the epoch's order) or -2 (the training process's draws).
    """
    return int(np.random.SeedSequence([abs(int(seed)), int(epoch), int(index) + 2]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler:
    """The training order: a shuffle (or, with ``weights``, a weighted draw with replacement) that is a
    pure function of (seed, epoch). It yields ``(epoch, index)`` so that :class:`ImageSet` can seed each
    image's augmentation, which makes a resumed run repeat exactly what an uninterrupted one does."""

    def __init__(self, n: int, seed: int = 0, *, weights=None, epoch: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), int(epoch)
        self.weights = None if weights is None else np.asarray(weights, np.float64)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch's start
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(torch.as_tensor(self.weights), self.n, replacement=True, generator=g)
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in order])


def native_size(ds: Dataset) -> int:
    """The shorter side of the dataset's first image."""
    if ds.arrays is not None:
        return int(min(ds.arrays.shape[1:3]))
    return int(min(ds.image(0).size))


def jpeg_quality(ds: Dataset) -> int | None:
    """The JPEG quality the dataset's image files were saved with (from the quantisation table), or None."""
    import io

    from PIL import Image

    if ds.arrays is not None or "path" not in ds.meta.columns:
        return None
    path = str(ds.meta["path"].iat[0])
    if not path.lower().endswith((".jpg", ".jpeg")):
        return None
    with Image.open(path) as im:
        table = list(im.quantization.get(0, []))
        rgb = im.convert("RGB")
    best, err = None, float("inf")
    for q in range(50, 101):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=q)
        ref = list(Image.open(buf).quantization[0])
        e = sum(abs(a - b) for a, b in zip(table, ref))
        if e < err:
            best, err = q, e
    return best if err == 0 else None


def default_workers(n_items: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1)) if n_items > 256 else 0


def make_loader(
    dataset: ImageSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler=None,
    num_workers: int | None = None,
    pin_memory: bool = False,
    seed: int = 0,
    drop_last: bool = False,
):
    import torch

    workers = default_workers(len(dataset)) if num_workers is None else num_workers
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=g,
    )
