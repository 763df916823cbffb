"""Streaming chunks (Lightning's ``litdata``): data that outgrows one machine's disk or page cache.

``skinlesion prepare DATA --format litdata --out DIR_OR_URL [--size N] [--chunk-mb M]`` writes

- ``DIR/chunk-*.bin`` + ``DIR/index.json``  litdata's chunks (``litdata.optimize``), one sample per image:
  ``image_id``, ``label`` and the uint8 (size, size, 3) pixels, made by the cache's own source stage
  (``Preprocess(input_size=size, source_size=size).to_source``, as :mod:`skinlesion.data.prepare`), so the two
  hold byte-identical pixels;
- ``DIR/meta.csv``  the metadata (image_id, lesion_id, dx, label, age, sex, localization, ...) in the source's
  order, with ``index``: the image's global sample index in the chunks;
- ``DIR/skinlesion_litdata.json``  our marker: format version, size, count, label set, chunk size, source.

A local folder is written in this process by litdata's own chunk writer (``litdata.streaming.writer.BinaryWriter``,
what ``litdata.optimize``'s worker runs), not through ``optimize``'s worker processes: a full disk is then one
``OSError`` here, said in one sentence (exit 2) at the first failed write, with no child process left behind
(``optimize``'s main loop waited forever for a worker that died of it), and Ctrl-C is an ordinary interrupt
(exit 130; ``optimize`` installs a SIGINT handler that ends the process with ``os._exit(0)``). While it writes,
the folder holds ``skinlesion_litdata.unfinished``; a folder with that file (or with chunks and no index)
is refused as "an unfinished ``prepare --format litdata``: rerun it with --force". An object-storage URL
still goes through ``litdata.optimize``, which uploads the chunks.

The samples are written in a seeded random order (one writer process, so global sample ``i`` is the ``i``-th
of that order): every chunk holds a mix of classes and lesions, and litdata's shuffle of the chunks (and of the
items inside each) then gives a training order without random access over the whole set. ``DIR`` may be an
object-storage URL (``s3://``, ``gs://``); it is handed to litdata as it is.

``load_dataset(DIR)`` returns a :class:`~skinlesion.data.Dataset` of layout ``"litdata"`` whose ``meta`` is
the cache's and whose ``arrays`` (:class:`ChunkArray`) reads a sample's pixels by position (random access,
one chunk at a time): ``split``, ``--folds``, ``info``, ``audit``, ``evaluate`` and validation use it.

Training streams. The design choice: the training subset is a *view* of the one chunk set, not a chunk set of
its own. :class:`~skinlesion.data.stream.StreamSet` opens a ``litdata.StreamingDataset`` (shuffle on, the run's seed) and restricts it
with ``StreamingDataset.subset`` to the global indices of the manifest's train ids; litdata turns those into
per-chunk regions, so it reads only the chunks that hold train images and splits them across DDP ranks and
DataLoader workers by chunk region (disjoint parts, the same number of items on every rank: under DDP litdata
drops at most ``world_size * batch_size - 1`` items an epoch so that every rank gets whole batches; on one
process it drops nothing). Why not one chunk set per subset: the split is made after ``prepare`` (often many
splits, or K folds, of one prepared set), and rewriting the chunks per split would copy the data each time.
Validation (small) reads its images by position through :class:`ChunkArray`, the existing path.

The streamed samples go through the existing augmentation, never a second one: uint8 batches to the training
device (``--augment-on device``: :class:`~skinlesion.augment.BatchAugment` via ``StreamSet``'s PixelSet
hooks) or ``Preprocess.train_transform`` image by image on the DataLoader workers, each image seeded from
(seed, epoch, position) as :class:`~skinlesion.data.loader.ImageSet` does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..errors import SkinLesionError, atomic_text, atomic_write, lock_folder

MARKER = "skinlesion_litdata.json"
UNFINISHED = "skinlesion_litdata.unfinished"  # present while prepare writes; removed last, after the marker
META = "meta.csv"
INDEX = "index.json"
FORMAT_VERSION = 1
ORDER_SEED = 20240521  # the write order's seed (any fixed number: the order only has to mix the classes)
_KEEP = {MARKER, META, INDEX, UNFINISHED}
UNFINISHED_SENTENCE = "{where} is an unfinished `prepare --format litdata`: rerun it with --force"


_SCHEMES = ("s3", "gs", "r2", "hf")


def is_url(data) -> bool:
    """True for an object-storage address (``s3://bucket/x``, ``gs://...``): handed to litdata as it is. A
    ``pathlib.Path`` made of one (``s3:/bucket/x``, as a command-line path option turns it) counts too."""
    return as_url(data) is not None


def as_url(data) -> str | None:
    """``data`` as an object-storage URL (``s3://bucket/x``), or None for a local path."""
    text = str(data)
    scheme, sep, rest = text.partition(":/")
    if not sep or scheme.lower() not in _SCHEMES:
        return None
    return f"{scheme.lower()}://{rest.lstrip('/')}"


def _litdata():
    try:
        os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI request from a training run
        import litdata
    except ImportError:
        raise SkinLesionError(
            "Streaming chunks need the litdata package, which is not installed; install it with `pip install litdata`."
        ) from None
    return litdata


def is_litdata(path) -> bool:
    """True for a folder that holds litdata chunks (litdata's index.json) or our marker."""
    if is_url(path):
        return True
    p = Path(path)
    return p.is_dir() and ((p / MARKER).exists() or (p / INDEX).exists() or (p / UNFINISHED).exists() or _has_chunks(p))


def _has_chunks(p: Path) -> bool:
    return any(q.name.startswith("chunk-") and q.name.endswith(".bin") for q in p.iterdir())


class _Sample:
    """``optimize``'s function: a dataset position to its stored sample (picklable for litdata's worker process)."""

    def __init__(self, ds, size: int):
        from ..preprocess import Preprocess

        self.ds, self.prep = ds, Preprocess(input_size=size, source_size=size)  # the cache's source stage exactly

    def __call__(self, position: int):
        pixels = np.ascontiguousarray(np.asarray(self.prep.to_source(self.ds.image(int(position))), dtype=np.uint8))
        return {
            "image_id": str(self.ds.meta["image_id"].iat[int(position)]),
            "label": int(self.ds.meta["label"].iat[int(position)]),
            "pixels": pixels,
        }


def _clear_local(out: Path, force: bool) -> None:
    """Refuse (or, with ``force``, remove) chunks already in ``out``: never mix two chunk sets."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SkinLesionError(f"{out} is a file, not a folder; choose another --out.")
    ours = [p for p in out.iterdir() if p.name in _KEEP or p.suffix == ".bin" or p.name == ".checkpoints"]
    if ours and not force:
        raise SkinLesionError(f"{out} already holds streaming chunks; pass --force to replace them or choose another --out.")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare_litdata(
    ds,
    out,
    size: int = 256,
    *,
    source,
    chunk_mb: float = 64,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Write the :class:`~skinlesion.data.Dataset` ``ds`` (read from ``source``) as litdata chunks into ``out`` (a folder
    or an object-storage URL); see the module docstring."""

    if size < 8 or size > 2048:
        raise SkinLesionError(f"--size {size} is out of range; use 8 to 2048 pixels (256 suits 224 px training).")
    if not 0.01 <= chunk_mb <= 4096:
        raise SkinLesionError(f"--chunk-mb {chunk_mb:g} is out of range; use 0.01 to 4096 (litdata suggests about 64).")
    litdata = _litdata()
    if ds.layout in ("cache", "litdata"):
        raise SkinLesionError(f"{source} is already prepared ({ds.layout}); prepare the original dataset instead.")
    remote = is_url(out)
    lock = None
    if remote:
        out = as_url(out)
    else:
        out = Path(out)
        lock = lock_folder(out, "prepare")  # noqa: F841 (held until this function returns)
        _clear_local(out, force)
        out.mkdir(parents=True, exist_ok=True)
    n = len(ds)
    order = np.random.default_rng(ORDER_SEED).permutation(n)
    if not remote:
        _write_local(ds, out, size, order, chunk_mb, progress)
        written = _count_written(out)
    else:
        written = _optimize_remote(litdata, ds, out, size, order, chunk_mb, force, progress)
    if written is not None and written != n:  # litdata's worker failed without saying so to the caller
        raise SkinLesionError(f"litdata wrote {written} of {n} images into {out}; see the messages above and rerun with --force.")
    meta = ds.meta.drop(columns=[c for c in ("path", "index") if c in ds.meta.columns]).copy()
    index = np.empty(n, np.int64)
    index[order] = np.arange(n)
    meta["index"] = index
    state = {
        "format": "skinlesion litdata chunks",
        "version": FORMAT_VERSION,
        "size": int(size),
        "n": int(n),
        "label_set": ds.label_set.name,
        "classes": list(ds.label_set.codes),
        "chunk_mb": float(chunk_mb),
        "source": str(Path(source).resolve()),
        "layout": ds.layout,
        "sample": "image_id (str), label (int), pixels (uint8 size x size x 3)",
    }
    if remote:
        _upload_beside(str(out), meta, state)
    else:
        try:
            atomic_write(out / META, lambda t: meta.to_csv(t, index=False))
            atomic_text(out / MARKER, json.dumps(state, indent=2))  # a folder with the marker and no UNFINISHED is complete
        except (SkinLesionError, KeyboardInterrupt):
            _remove_chunks(out)
            raise
        (out / UNFINISHED).unlink()
    if progress:
        print(f"wrote {n} images as litdata chunks into {out}", file=sys.stderr)
    return state


def _write_local(ds, out: Path, size: int, order, chunk_mb: float, progress: bool) -> None:
    """The chunks of ``ds`` in ``order`` into the folder ``out``, in this process (see the module docstring).

    A failed write (a full disk) or Ctrl-C removes the chunks written so far and leaves ``UNFINISHED``.
    """
    from litdata.streaming.writer import BinaryWriter

    from ..errors import Interrupted, os_error_in, write_failure

    try:
        (out / UNFINISHED).write_text("skinlesion prepare --format litdata is writing this folder, or was stopped.\n")
    except OSError as exc:
        raise SkinLesionError(write_failure(out / UNFINISHED, exc)) from None
    sample = _Sample(ds, size)
    n = len(order)
    try:
        writer = BinaryWriter(str(out), chunk_bytes=int(chunk_mb * 1_000_000))
        for i, position in enumerate(order):
            writer[i] = sample(int(position))
            if progress and (i + 1) % 500 == 0:
                print(f"litdata chunks: {i + 1}/{n} images", file=sys.stderr)
        writer.done()
        writer._merge_no_wait()  # one writer: its index is the whole index.json (merge() would poll for it)
    except KeyboardInterrupt:
        _remove_chunks(out)
        raise Interrupted(f"{UNFINISHED_SENTENCE.format(where=out)}.") from None
    except SkinLesionError:
        _remove_chunks(out)
        raise
    except Exception as exc:
        _remove_chunks(out)
        err = os_error_in(exc)
        if err is not None:
            raise SkinLesionError(write_failure(out, err)) from None
        raise


def _remove_chunks(out: Path) -> None:
    """Free the space of a failed write: its chunks and index go, the UNFINISHED file stays (or is made)."""
    for p in out.iterdir():
        if p.name != UNFINISHED and (p.suffix in (".bin", ".json") or p.name in _KEEP or p.name.endswith(".tmp")):
            try:
                p.unlink()
            except OSError:
                pass
    try:
        (out / UNFINISHED).touch()
    except OSError:
        pass


def _optimize_remote(litdata, ds, out: str, size: int, order, chunk_mb: float, force: bool, progress: bool):
    """``litdata.optimize`` into an object-storage URL (it uploads the chunks); returns None (no local count)."""
    try:
        litdata.optimize(
            fn=_Sample(ds, size),
            inputs=[int(p) for p in order],
            output_dir=str(out),
            chunk_bytes=int(chunk_mb * 1_000_000),
            num_workers=1,  # one writer, in input order: global sample i is order[i] (meta.csv's index)
            keep_data_ordered=True,
            reorder_files=False,
            mode="overwrite" if force else None,
            verbose=progress,
            start_method="fork" if sys.platform.startswith("linux") else None,  # spawn would re-run the caller's __main__
        )
    except SkinLesionError:
        raise
    except Exception as exc:  # litdata's own refusals and the object store's failures (offline, no credentials, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SkinLesionError(f"litdata could not write the chunks to {out} ({reason}); check the address and your access to it.") from None
    return None


def _count_written(out: Path) -> int:
    """How many samples litdata's index.json lists (0 when it wrote none)."""
    try:
        return sum(int(c["chunk_size"]) for c in json.loads((out / INDEX).read_text())["chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _upload_beside(url: str, meta, state: dict) -> None:
    """meta.csv and the marker beside remote chunks, through litdata's own storage client."""
    import tempfile

    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as tmp:
        meta.to_csv(Path(tmp) / META, index=False)
        (Path(tmp) / MARKER).write_text(json.dumps(state, indent=2))
        try:
            fs = _get_fs_provider(url)
            for name in (META, MARKER):  # the marker last: chunks with a marker are complete
                fs.upload_file(str(Path(tmp) / name), url.rstrip("/") + "/" + name)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SkinLesionError(
                f"The chunks are in {url} but its {META} and {MARKER} could not be written ({reason}); rerun with --force."
            ) from None


def _fetch_beside(url: str) -> Path:
    """Download meta.csv and the marker of remote chunks into a local folder; one sentence when it cannot."""
    import hashlib
    import tempfile

    _litdata()
    from litdata.streaming.fs_provider import _get_fs_provider

    local = Path(tempfile.gettempdir()) / "skinlesion-litdata" / hashlib.sha1(url.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    try:
        fs = _get_fs_provider(url)
        for name in (META, MARKER):
            fs.download_file(url.rstrip("/") + "/" + name, str(local / name))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SkinLesionError(
            f"Could not read the chunks' {MARKER} at {url} ({reason}); check the address and your access to it."
        ) from None
    return local


def read_marker(folder: Path, where: str) -> dict:
    marker = folder / MARKER
    if not marker.exists():
        raise SkinLesionError(
            f"{where} holds litdata chunks but no {MARKER}, so its images' metadata is unknown; "
            "write it with `skinlesion prepare DATA --format litdata --out DIR`."
        )
    try:
        state = json.loads(marker.read_text())
        ok = state.get("version") == FORMAT_VERSION and int(state["size"]) > 0 and int(state["n"]) > 0 and len(state["classes"]) >= 2
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise SkinLesionError(f"{where}/{MARKER} is damaged or of another format; prepare the chunks again with --force.")
    return state


def read_litdata(data) -> dict:
    """Open a chunks folder (or URL) written by :func:`prepare_litdata`: the fields of its
    :class:`~skinlesion.data.Dataset` (``load_dataset`` makes it, layout "litdata")."""
    import pandas as pd

    from ..classes import label_set

    where = as_url(data) or str(data)
    folder = _fetch_beside(where) if is_url(where) else Path(data)
    if not is_url(where) and ((folder / UNFINISHED).exists() or (_has_chunks(folder) and not (folder / INDEX).exists())):
        raise SkinLesionError(UNFINISHED_SENTENCE.format(where=where) + ".")
    if not is_url(where) and not (folder / INDEX).exists():
        raise SkinLesionError(
            f"{folder} has a {MARKER} but no litdata {INDEX}; its chunks are incomplete, prepare them again with --force."
        )
    state = read_marker(folder, where)
    try:
        meta = pd.read_csv(folder / META, dtype={"image_id": str, "lesion_id": str, "dx": str})
    except (OSError, ValueError, pd.errors.ParserError):
        meta = None
    if meta is None or len(meta) != state["n"] or not {"image_id", "lesion_id", "dx", "label", "index"} <= set(meta.columns):
        raise SkinLesionError(f"{where}/{META} is missing or damaged; prepare the chunks again with --force.")
    arrays = ChunkArray(where, int(state["n"]), int(state["size"]))
    return {"root": folder, "meta": meta, "arrays": arrays, "label_set": label_set(state["classes"])}


class ChunkArray:
    """The chunks' pixels as a read-only (N, size, size, 3) uint8 "array" by global sample index (random access)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, input_dir: str, n: int, size: int):
        self.input_dir, self.shape = str(input_dir), (int(n), int(size), int(size), 3)
        self._sd = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):  # DataLoader workers open their own reader
        return {**self.__dict__, "_sd": None}

    def _dataset(self):
        if self._sd is None:
            # random access: one sample decoded per read (litdata's "auto" window would decode its neighbours too)
            self._sd = _litdata().StreamingDataset(self.input_dir, shuffle=False, drop_last=False, batch_decode=0)
        return self._sd

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._dataset()[int(key)]["pixels"]
        rows = np.asarray(key).reshape(-1)
        return np.stack([self._dataset()[int(r)]["pixels"] for r in rows]) if len(rows) else np.empty((0, *self.shape[1:]), np.uint8)

    def __array__(self, dtype=None, copy=None):
        arr = self[np.arange(len(self))]
        return arr if dtype is None else arr.astype(dtype)
