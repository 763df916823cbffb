"""A prepared cache: every image decoded once and resized, for full-speed training.

``skinlesion prepare DATA --size 256 --out CACHE`` writes

- ``CACHE/images.npy``  uint8 array (N, size, size, 3), memory-mapped
- ``CACHE/HAM10000_metadata.csv``  the metadata (image_id, lesion_id, dx, ...) in array order
- ``CACHE/cache.json``  size, count, source, and how many images are done

Each image goes through :meth:`Preprocess.to_source` with ``source_size=size``, the
very function training and serving use, so a model trained on the cache sees the same
pixels as one trained on the raw folder with ``--source-size size``. ``train`` and
``evaluate`` accept ``CACHE`` in place of ``DATA``. An interrupted ``prepare`` resumes
where it stopped; a cache of another size is never mixed in.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import SkinLesionError, atomic_text, atomic_write, lock_folder

CHUNK = 256


def _write_state(out: Path, state: dict) -> None:
    atomic_text(out / "cache.json", json.dumps(state, indent=2))


def _array_ok(path: Path, shape: tuple) -> bool:
    """True when ``path`` is a complete .npy array of ``shape`` (header readable, file as long as it should be)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == shape and arr.dtype == np.uint8


def _allocate(path: Path, shape: tuple) -> None:
    """Create the .npy file with its disk space reserved, so a full disk is one sentence, not a SIGBUS later.

    A memory map of a sparse file fails with SIGBUS when the disk fills while pages are written;
    ``posix_fallocate`` asks for every block up front (ordinary writes of zeros where it is unsupported).
    """
    import os

    header = np.lib.format.header_data_from_array_1_0(np.empty((0,), np.uint8))
    header.update(shape=shape)
    nbytes = int(np.prod(shape))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.flush()
            try:
                os.posix_fallocate(f.fileno(), offset, nbytes)
            except OSError as exc:
                if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: the file system cannot reserve; write zeros instead
                    raise
                block = bytes(1 << 20)
                for left in range(nbytes, 0, -len(block)):
                    f.write(block[: min(left, len(block))])
            else:
                f.truncate(offset + nbytes)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        need = (nbytes + (1 << 20) - 1) >> 20
        raise SkinLesionError(
            f"Could not reserve {need} MiB for the cache at {path} ({exc.strerror or exc}); free some space or choose another --out."
        ) from None


def prepare(data: str | Path, out: str | Path, size: int = 256, *, allow_missing: bool = False, progress: bool = True) -> dict:
    """Decode and resize every image of ``data`` into the cache ``out``; resumable."""
    from ..preprocess import Preprocess
    from .ham10000 import load_dataset

    if size < 8 or size > 2048:
        raise SkinLesionError(f"--size {size} is out of range; use 8 to 2048 pixels (256 suits 224 px training).")
    out = Path(out)
    ds = load_dataset(data, allow_missing=allow_missing)
    lock = lock_folder(out, "prepare")  # noqa: F841 (held until this function returns)
    if ds.layout == "cache":
        raise SkinLesionError(f"{data} is already a prepared cache; prepare the original dataset instead.")
    n = len(ds)
    prep = Preprocess(input_size=size, source_size=size)  # the source stage exactly as training's --source-size
    state_path = out / "cache.json"
    shape = (n, size, size, 3)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is not None:
        if state["size"] != size:
            raise SkinLesionError(
                f"{out} holds a cache of {state['size']}x{state['size']} images; it will not mix in "
                f"{size}x{size} ones. Use --size {state['size']} to resume it, or another --out."
            )
        if state["n"] != n or state["source"] != str(Path(data).resolve()):
            raise SkinLesionError(f"{out} holds a cache of another dataset ({state['source']}, {state['n']} images); choose another --out.")
        if not _array_ok(out / "images.npy", shape):
            # killed before its array file was complete: nothing in it can be trusted, so start that cache again
            print(f"restarting {out}: its image array was never completed", file=sys.stderr)
            state = None
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        meta = ds.meta.drop(columns=[c for c in ("path", "index") if c in ds.meta.columns]).copy()
        meta["index"] = np.arange(n)
        atomic_write(out / "HAM10000_metadata.csv", lambda t: meta.to_csv(t, index=False))
        state = {
            "size": size,
            "n": n,
            "done": 0,
            "source": str(Path(data).resolve()),
            "layout": ds.layout,
            "interpolation": prep.source_interpolation,
            "format": "uint8 (N, size, size, 3) in images.npy",
        }
        _allocate(out / "images.npy", shape)  # complete or absent: written as .tmp and renamed
        _write_state(out, state)
    done = int(state["done"])
    arr = np.load(out / "images.npy", mmap_mode="r+")
    if done:
        print(f"resuming {out}: {done} of {n} images already done", file=sys.stderr)
    t0 = time.time()
    start = done
    try:
        while done < n:
            end = min(n, done + CHUNK)
            for i in range(done, end):
                arr[i] = np.asarray(prep.to_source(ds.image(i)), dtype=np.uint8)
            arr.flush()
            done = end
            state["done"] = done
            _write_state(out, state)
            if progress:
                rate = (done - start) / max(time.time() - t0, 1e-9)
                print(f"\rprepared {done}/{n} images ({rate:.0f} img/s)", end="", file=sys.stderr, flush=True)
    except OSError as exc:
        raise SkinLesionError(
            f"Could not write the cache at {out} ({exc.strerror or exc}); free some space and rerun the same command to resume."
        ) from None
    finally:
        del arr
        if progress:
            print(file=sys.stderr)
    return state
