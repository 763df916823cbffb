"""Training from litdata chunks: the train subset streamed (see :mod:`skinlesion.data.shards` for the design)."""

from __future__ import annotations

import numpy as np
import torch
import torch.utils.data

from .loader import PixelSet, epoch_seed
from .shards import _litdata


class StreamSet(torch.utils.data.IterableDataset):
    """The training images ``positions`` of a litdata ``ds`` streamed through ``litdata.StreamingDataset`` (shuffled by
    chunk and within chunks; split across DDP ranks and DataLoader workers by litdata), restricted to them with
    ``StreamingDataset.subset``.

    ``mode`` "device": items ``(uint8 (H, W, 3), label, position)``, batched by the DataLoader and augmented on the
    training device through PixelSet's hooks (the same :class:`~skinlesion.augment.BatchAugment`). "workers":
    ``(tensor, label, position)`` through ``prep.train_transform()``, seeded from (seed, epoch, index in ``positions``)
    as :class:`~skinlesion.data.loader.ImageSet` does: the same augmented tensors as the cache gives.

    litdata's sharding: the (shuffled) chunk regions are dealt to ``world_size * num_workers`` workers in turn, so the
    ranks' parts are disjoint. On one process nothing is dropped; under DDP (``drop_last``) every rank gets
    ``(n // batch_size // world_size) * batch_size`` items and the rest of the epoch (fewer than
    ``world_size * batch_size``) is not read.
    """

    def __init__(self, ds, positions, prep, *, mode: str, seed: int = 0, batch_size: int = 1, epoch: int = 0):
        from ..augment import BatchAugment

        if mode not in ("device", "workers"):
            raise ValueError(mode)
        self.ds, self.prep, self.mode, self.seed = ds, prep, mode, int(seed)
        self.positions = np.asarray(positions, int)
        self.labels = ds.labels.astype(np.int64)
        self.batch_size = int(batch_size)
        self.epoch = 0
        self._by_id = {iid: i for i, iid in enumerate(ds.meta["image_id"])}
        self._slot = {int(p): i for i, p in enumerate(self.positions)}  # ImageSet seeds by the index into positions
        self.size = tuple(int(v) for v in ds.arrays.shape[1:3])
        self.resident = False
        self.augment = BatchAugment(prep, seed) if mode == "device" else None
        self.transform = prep.train_transform() if mode == "workers" else None
        index = ds.meta["index"].to_numpy()[self.positions]
        # batch_decode=0: one sample decoded per read. litdata's "auto" decodes a window of samples at a time, and with
        # the in-chunk shuffle it decoded ~43 samples per image read (245 against 15,600 images/s, benchmarks/RESULTS.md)
        base = _litdata().StreamingDataset(ds.arrays.input_dir, shuffle=True, seed=self.seed, drop_last=False, batch_decode=0)
        self.stream = base.subset(sorted(int(i) for i in index))
        self.set_epoch(epoch)

    def __len__(self) -> int:
        """Items this rank streams in an epoch (litdata's count: the same on every rank)."""
        self._refresh()
        return int(self.stream.get_len(self.stream.num_workers, self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        """The training module calls this at each epoch's start, before the loader starts its workers."""
        self.epoch = int(epoch)
        self._refresh()
        self.stream.set_epoch(self.epoch + 1)  # litdata counts epochs from 1

    def set_workers(self, num_workers: int) -> None:
        self.stream.set_num_workers(max(1, int(num_workers)))

    def _refresh(self) -> None:
        """The distributed environment as it is now (the set is made before Lightning starts the process group)."""
        from litdata.utilities.env import _DistributedEnv

        env = _DistributedEnv.detect()
        if env != self.stream.distributed_env:
            self.stream.distributed_env = env
            self.stream.shuffler = None
        self.stream.set_drop_last(env.world_size > 1)  # DDP: every rank the same number of whole batches
        self.stream.set_batch_size(self.batch_size)

    def __iter__(self):
        for sample in self.stream:
            yield self.item(sample)

    def item(self, sample):
        position = self._by_id[sample["image_id"]]
        label = int(self.labels[position])
        if self.mode == "device":
            return sample["pixels"], label, position  # stacked by stack_pixels
        from PIL import Image

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, self.epoch, self._slot[position]))
            return self.transform(Image.fromarray(sample["pixels"], "RGB")), label, position

    # the training module's hooks (skinlesion.train.LesionModule): PixelSet's own, so the augmentation is the same
    takes = PixelSet.takes
    with_plan = PixelSet.with_plan
    augmented = PixelSet.augmented


def stack_pixels(items):
    """The device path's collate: ``(uint8 (N, H, W, 3), label, position)`` stacked by numpy, as PixelSet's batch is
    cut from its array. (torch.stack of uint8 images on its 2-thread pool took 0.15-0.5 s a batch of 64 at 256 px on
    the shared 2-core box, against 8 ms on one thread: a busy neighbour's cores stall the pool.)"""
    x = np.stack([np.asarray(i[0], dtype=np.uint8) for i in items])
    return (
        torch.from_numpy(x),
        torch.tensor([i[1] for i in items], dtype=torch.int64),
        torch.tensor([i[2] for i in items], dtype=torch.int64),
    )


class StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader that brings its stream up to date (process group, epoch) just before its workers copy it."""

    def __iter__(self):
        self.dataset._refresh()
        return super().__iter__()


def stream_loader(train_set: StreamSet, batch_size: int, *, num_workers: int, pin_memory: bool, drop_last: bool):
    """A DataLoader over the stream. Workers are not persistent, so each epoch's copies carry its epoch."""
    train_set.set_workers(num_workers)
    return StreamLoader(
        train_set,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        drop_last=drop_last,
        collate_fn=stack_pixels if train_set.mode == "device" else None,
    )
