"""PyTorch datasets and loaders over a :class:`~skinlesion.data.Dataset`.

Two training sets: :class:`ImageSet` augments each image on a DataLoader worker (PIL + torchvision,
``Preprocess.train_transform``); :class:`PixelSet` hands whole batches of uint8 source pixels to the
training device, which augments them there (:mod:`skinlesion.augment`), and keeps a cache that fits in
the device's memory on the device.
"""

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
    """DataLoader workers: every core this process may use but one (the training loop's), none for small sets."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, cpus - 1) if n_items > 256 else 0


class PixelSet:
    """The images ``positions`` of ``ds`` as uint8 source pixels (``Preprocess.to_source``, unnormalised) for
    augmentation on the training device, fetched a whole batch at a time (``__getitems__``).

    A batch is ``(pixels, label, position)``: pixels uint8 (N, H, W, 3). With ``resident=True`` the set's pixels are
    copied once to the training device (:meth:`on_device`) and a batch carries their row numbers instead (int64 (N,)),
    so that the device gathers the batch itself and the loader does no work. ``augment`` holds the
    :class:`~skinlesion.augment.BatchAugment` that the training module applies (``LesionModule.on_after_batch_transfer``).

    Keys are indices into ``positions`` or ``(epoch, index)`` from :class:`EpochSampler`; the augmentation is drawn
    from (seed, epoch, position), so the epoch is not needed here.
    """

    def __init__(self, ds: Dataset, positions, prep, *, seed: int = 0, resident: bool = False):
        """``resident``: keep the pixels on the (CUDA) training device when they fit (:func:`device_budget`)."""
        from ..augment import BatchAugment

        self.ds, self.prep = ds, prep
        self.positions = np.asarray(positions, int)
        self.labels = ds.labels[self.positions].astype(np.int64)
        self.augment = BatchAugment(prep, seed)
        self.store, self.rows = source_pixels(ds, self.positions, prep)
        if self.store is not None:
            self.size = tuple(int(v) for v in self.store.shape[1:3])
        else:
            self.size = (int(prep.source_size),) * 2
        self.resident = bool(resident) and self.store is not None and self.nbytes <= device_budget()
        self._device: dict = {}

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def nbytes(self) -> int:
        return len(self) * self.size[0] * self.size[1] * 3

    def __getitems__(self, keys):
        import torch

        idx = np.fromiter((k[1] if isinstance(k, tuple) else k for k in keys), np.int64, len(keys))
        pos, y = self.positions[idx], self.labels[idx]
        if self.resident:
            x = torch.from_numpy(idx)
        elif self.store is not None:
            x = torch.from_numpy(np.ascontiguousarray(self.store[self.rows[idx]]))
        else:
            x = torch.from_numpy(np.stack([self._decode(int(p)) for p in pos]))
        return x, torch.from_numpy(y), torch.from_numpy(pos.astype(np.int64))

    def __getitem__(self, key):
        x, y, pos = self.__getitems__([key])
        return x[0], y[0], pos[0]

    def _decode(self, position: int) -> np.ndarray:
        arr = np.asarray(self.prep.to_source(self.ds.image(position)), dtype=np.uint8)
        if arr.shape[:2] != self.size:
            from ..errors import SkinLesionError

            raise SkinLesionError(
                f"Image {self.ds.meta['image_id'].iat[position]} is {arr.shape[1]}x{arr.shape[0]} after the source stage, "
                f"not {self.size[1]}x{self.size[0]}; pass --source-size or train with --augment-on workers."
            )
        return arr

    def on_device(self, device):
        """The set's pixels on ``device`` (uint8 (N, H, W, 3), copied once, in chunks)."""
        import torch

        key = str(device)
        if key not in self._device:
            dev = torch.empty((len(self), *self.size, 3), dtype=torch.uint8, device=device)
            for a in range(0, len(self), 1024):
                dev[a : a + 1024].copy_(torch.from_numpy(np.ascontiguousarray(self.store[self.rows[a : a + 1024]])))
            self._device = {key: dev}
        return self._device[key]

    # ---- the training module's hooks (skinlesion.train.LesionModule) ----
    def takes(self, batch, size: int) -> bool:
        """True for one of this set's batches (``size`` entries: 3 from the loader, 4 with its plan): uint8 pixels or,
        resident, row numbers. Validation batches (float images) are not."""
        import torch

        if not isinstance(batch, (tuple, list)) or len(batch) != size:
            return False
        x = batch[0]
        return x.dtype == torch.uint8 and x.ndim == 4 or self.resident and x.dtype == torch.int64 and x.ndim == 1

    def with_plan(self, batch, epoch: int):
        """On the host, before the copy to the device: the batch with its augmentation plan appended."""
        import torch

        x, y, pos = batch
        pin = torch.cuda.is_available() and x.is_pinned()
        return x, y, pos, self.augment.plan(self.augment.draw(epoch, pos.numpy(), *self.size), pin=pin)

    def augmented(self, batch):
        """On the device: ``(images, label, position)``, the images augmented and normalised."""
        x, y, pos, plan = batch
        if x.ndim == 1:
            return self.augment.apply(self.on_device(x.device), plan, rows=x), y, pos
        return self.augment.apply(x, plan), y, pos


RESIDENT_SHARE = 0.25  # the share of a GPU's memory a resident training set may take (HAM10000 at 256 px: 1.4 GB)


def device_budget() -> int:
    """Bytes of training pixels to keep on this process's GPU: :data:`RESIDENT_SHARE` of its memory (0 without one).

    Asks for the device's properties only (no memory is allocated there, so no context is made on another rank's GPU).
    """
    import torch

    if not torch.cuda.is_available():
        return 0
    device = int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())
    return int(torch.cuda.get_device_properties(device).total_memory * RESIDENT_SHARE)


def augment_where(requested: str, ds: Dataset, prep) -> str:
    """Where the training augmentation runs, "device" or "workers", for ``--augment-on`` (auto, device or workers).

    The device path needs images of one size after the source stage: a ``source_size`` (a prepared cache's, small
    images', or ``--source-size``) or an array of images; "auto" picks it then, and workers otherwise. One sentence
    when "device" cannot be had.
    """
    from ..errors import SkinLesionError

    if requested not in ("auto", "device", "workers"):
        raise SkinLesionError(f"Unknown --augment-on {requested!r}; use auto, device or workers.")
    if requested == "workers":
        return "workers"
    one_size = prep.source_size is not None or (ds.arrays is not None and (prep.crop == "none" or ds.arrays.shape[1] == ds.arrays.shape[2]))
    if one_size and prep.interpolation in ("bilinear", "bicubic", "box"):
        return "device"
    if requested == "device" and not one_size:
        raise SkinLesionError(
            "--augment-on device needs images of one size: train from a prepared cache (skinlesion prepare) or pass "
            "--source-size, or use --augment-on workers."
        )
    if requested == "device":
        raise SkinLesionError(
            f"--augment-on device resamples with bilinear, bicubic or box filters, not {prep.interpolation}; use --augment-on workers."
        )
    return "workers"


def source_pixels(ds: Dataset, positions, prep):
    """``(store, rows)`` with ``store[rows[i]]`` the source pixels of ``positions[i]``, when they can be read without
    decoding: a cache or .npz already at the source size (``to_source`` is then the identity), or small images,
    decoded once here. ``(None, None)`` otherwise (each batch decodes its images)."""
    positions = np.asarray(positions, int)
    if ds.arrays is not None:
        h, w = ds.arrays.shape[1:3]
        at_size = (h, w) == (prep.source_size,) * 2 if prep.source_size else prep.crop == "none" or h == w
        if at_size:  # square at the source size (a centre crop of a square is the square), or no source stage at all
            return ds.arrays, ds.meta["index"].to_numpy()[positions]
    if native_size(ds) <= SMALL_SIDE:
        store = np.stack([np.asarray(prep.to_source(ds.image(int(p))), dtype=np.uint8) for p in positions])
        return store, np.arange(len(positions))
    return None, None


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
        collate_fn=whole_batch if hasattr(dataset, "__getitems__") else None,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=g,
    )


def whole_batch(batch):
    """The collate function of a set that fetches whole batches (:class:`PixelSet`): nothing left to collate."""
    return batch
