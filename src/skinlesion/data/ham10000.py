"""Read a HAM10000 dataset in the layouts users actually have.

Accepted ``DATA``:

- the Kaggle download: ``HAM10000_metadata.csv`` with ``HAM10000_images_part_1/``
  and ``HAM10000_images_part_2/`` (the ``hmnist_*.csv`` files are ignored);
- a folder with ``HAM10000_metadata.csv`` and the images in ``images/``, beside
  the CSV, or in any sub-folder (found by ``image_id``; ``.jpg``, ``.jpeg``, ``.png``);
- the metadata CSV itself;
- a DermaMNIST / medmnist ``.npz`` file (``{train,val,test}_images/_labels``, any subset);
- a prepared cache written by ``skinlesion prepare``.

Whatever the layout, the result is a :class:`~skinlesion.data.dataset.Dataset`: a metadata table with one
row per image (``image_id, lesion_id, dx, label`` and whatever else is known)
and a way to load each image as upright RGB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import CODES
from ..errors import SkinLesionError, missing
from ..intake import IMAGE_SUFFIXES, load_rgb  # noqa: F401 (IMAGE_SUFFIXES: part of this module's interface)
from .dataset import Dataset, index_images  # noqa: F401 (re-exported: skinlesion.data.ham10000.Dataset)

METADATA_NAME = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS = ("dx_type", "age", "sex", "localization")
OFFICIAL_SPLIT_NAME = "dermamnist_split.csv"
NPZ_SPLITS = ("train", "val", "test")


def load_dataset(data: str | Path | list, *, allow_missing: bool = False, on_conflict: str = "keep-first") -> Dataset:
    """Read ``data`` in any accepted layout; see the module docstring. Several: one combined dataset
    (:mod:`skinlesion.data.combine`: one label set, each image once; ``on_conflict``: what becomes of an image id
    a later dataset gives another diagnosis, ``keep-first`` or ``drop``).

    The ISIC layouts (:mod:`skinlesion.data.isic_layouts`) are recognised by their CSV files' columns: a CSV
    file passed itself, a folder without ``HAM10000_metadata.csv`` whose CSV files are an ISIC layout's, or,
    where nothing else is found, one of its sub-folders.
    """
    if isinstance(data, (list, tuple)):
        if len(data) == 1:
            return load_dataset(data[0], allow_missing=allow_missing)
        from .combine import check_distinct, combine

        check_distinct(data)
        return combine([load_dataset(d, allow_missing=allow_missing) for d in data], [str(d) for d in data], on_conflict=on_conflict)
    # ---- litdata streaming chunks (skinlesion.data.shards): a folder with index.json / our marker, or a URL ----
    from .shards import is_litdata, read_litdata

    if is_litdata(data):
        return Dataset(layout="litdata", **read_litdata(data))
    # ---- end of the litdata block ----
    from . import isic_layouts

    path = Path(data).expanduser()
    if not path.exists():
        raise SkinLesionError(f"{missing(path)}; pass the folder that holds {METADATA_NAME} (or a DermaMNIST .npz file).")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _read_npz(path)
        if path.suffix.lower() == ".csv":
            found = isic_layouts.layout_of_csv(path)
            if found is not None:
                return isic_layouts.read_layout(found, allow_missing=allow_missing)
            return _read_folder(path.parent, path, allow_missing)
        raise SkinLesionError(f"{path} is neither a folder, a metadata .csv nor a .npz file; pass the HAM10000 folder.")
    if (path / "cache.json").exists():
        return read_cache(path)
    if not any(path.iterdir()):
        raise SkinLesionError(f"{path} is an empty folder; download HAM10000 into it first (skinlesion download ham10000 --to DIR).")
    found = None if (path / METADATA_NAME).exists() else isic_layouts.find_layout(path)
    if found is not None:
        return isic_layouts.read_layout(found, allow_missing=allow_missing)
    csv = _find_metadata(path)
    if csv is None:
        npzs = sorted(path.glob("*.npz"))
        if len(npzs) == 1:
            return _read_npz(npzs[0])
        found = isic_layouts.find_layout(path, depth=1)
        if found is not None:
            return isic_layouts.read_layout(found, allow_missing=allow_missing)
        raise SkinLesionError(
            f"No {METADATA_NAME} found in {path}, nor the CSV files of an ISIC 2019, ISIC 2020 or isic-cli layout; pass the folder "
            "of the HAM10000 download (it holds the metadata CSV and the image folders), an ISIC download's folder or a DermaMNIST .npz file."
        )
    return _read_folder(path, csv, allow_missing)


def _find_metadata(root: Path) -> Path | None:
    direct = root / METADATA_NAME
    if direct.exists():
        return direct
    for depth_glob in ("*/" + METADATA_NAME, "*/*/" + METADATA_NAME, "*/*/*/" + METADATA_NAME):
        found = sorted(root.glob(depth_glob))
        if found:
            return found[0]
    # any other name that looks like HAM10000 metadata
    found = sorted(p for p in root.glob("*metadata*.csv"))
    return found[0] if found else None


def read_metadata(csv: Path) -> pd.DataFrame:
    """Read and validate a HAM10000 metadata CSV (columns, dx codes, duplicate ids)."""
    from .csvfile import read_csv

    meta = read_csv(csv, "the HAM10000 metadata CSV", dtype={"image_id": str, "lesion_id": str, "dx": str})
    meta.columns = [str(c).strip() for c in meta.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise SkinLesionError(
            f"{csv.name} lacks the required column(s) {', '.join(missing)}; a HAM10000 metadata CSV "
            f"needs {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(meta.columns) or 'none'})."
        )
    if len(meta) == 0:
        raise SkinLesionError(f"{csv.name} has no rows; it should list one image per row.")
    for col in REQUIRED_COLUMNS:
        blank = meta[col].isna() | (meta[col].astype(str).str.strip() == "")
        if blank.any():
            raise SkinLesionError(
                f"{csv.name} has {int(blank.sum())} row(s) with an empty {col} "
                f"(first at line {int(np.flatnonzero(blank.to_numpy())[0]) + 2}); fill them in or remove them."
            )
        meta[col] = meta[col].astype(str).str.strip()
    meta["dx"] = meta["dx"].str.lower()
    unknown = sorted(set(meta["dx"]) - set(CODES))
    if unknown:
        counts = meta["dx"].value_counts()
        listed = ", ".join(f"{u!r} ({counts[u]} rows)" for u in unknown[:5])
        raise SkinLesionError(f"{csv.name} has unknown dx code(s) {listed}; the HAM10000 codes are {', '.join(CODES)}.")
    dup = meta["image_id"][meta["image_id"].duplicated()]
    if len(dup):
        raise SkinLesionError(
            f"{csv.name} lists {len(dup)} duplicate image_id(s) (first: {', '.join(dup.unique()[:5])}); each image must appear once."
        )
    meta["label"] = meta["dx"].map({c: i for i, c in enumerate(CODES)}).astype(int)
    return meta


def with_official_split(meta: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """``meta`` with the official DermaMNIST ``split`` column from ``dermamnist_split.csv`` in ``folder``, when there is one."""
    split_csv = Path(folder) / OFFICIAL_SPLIT_NAME
    if "split" not in meta.columns and split_csv.exists():
        official = pd.read_csv(split_csv, dtype={"image_id": str})
        if {"image_id", "split"} <= set(official.columns):
            meta = meta.merge(official[["image_id", "split"]], on="image_id", how="left")
    return meta


def _read_folder(root: Path, csv: Path, allow_missing: bool) -> Dataset:
    meta = read_metadata(csv)
    images = index_images(root)  # csv lies in root or below it, so this walk covers its folder too
    meta["path"] = meta["image_id"].map(lambda i: str(images[i]) if i in images else None)
    missing = meta["path"].isna()
    warnings: list[str] = []
    if missing.all():
        raise SkinLesionError(
            f"None of the {len(meta)} images listed in {csv.name} were found under {root}; "
            "put the image files (ISIC_XXXXXXX.jpg) beside the CSV or in a sub-folder."
        )
    if missing.any():
        ids = meta.loc[missing, "image_id"].tolist()
        msg = f"{len(ids)} of {len(meta)} images listed in {csv.name} are missing under {root} (first: {', '.join(ids[:5])})"
        if not allow_missing:
            raise SkinLesionError(msg + "; add the files, or pass --allow-missing to drop those rows.")
        warnings.append(msg + "; those rows were dropped (--allow-missing).")
        meta = meta.loc[~missing].reset_index(drop=True)
    meta = with_official_split(meta, csv.parent)
    layout = "kaggle" if any(p.name.lower().startswith("ham10000_images_part") for p in root.iterdir()) else "folder"
    return Dataset(root=root, layout=layout, meta=meta, warnings=warnings)


def _read_npz(path: Path) -> Dataset:
    import zipfile

    try:
        if not zipfile.is_zipfile(path):  # numpy would try it as a pickle and advise allow_pickle: never
            raise SkinLesionError(
                f"{path.name} is not a .npz file (a .npz is a zip archive of arrays, and this is not one); "
                "use a DermaMNIST .npz (dermamnist.npz from MedMNIST) or re-download it."
            )
        npz = np.load(path, allow_pickle=False)
        keys = set(npz.files)
    except SkinLesionError:
        raise
    except Exception as exc:
        raise SkinLesionError(f"{path.name} is not a readable .npz file ({type(exc).__name__}); re-download it.") from None
    splits = [s for s in NPZ_SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]
    if not splits:
        raise SkinLesionError(
            f"{path.name} has none of the DermaMNIST arrays ({', '.join(f'{s}_images/{s}_labels' for s in NPZ_SPLITS)}); "
            f"found: {', '.join(sorted(keys)) or 'nothing'}."
        )
    arrays, rows = [], []
    offset = 0
    for s in splits:
        try:
            imgs = npz[f"{s}_images"]
            labels = np.asarray(npz[f"{s}_labels"]).reshape(-1)
        except ValueError:  # object arrays: numpy would unpickle them, which can run code
            raise SkinLesionError(
                f"{path.name}: {s}_images or {s}_labels holds Python objects, not plain arrays, and is refused "
                "(reading it could run code); use a DermaMNIST .npz of uint8 images and integer labels."
            ) from None
        except (OSError, EOFError, KeyError) as exc:
            raise SkinLesionError(f"{path.name} is damaged ({type(exc).__name__} reading {s}_images); re-download it.") from None
        if imgs.ndim == 3:  # grayscale arrays: repeat to RGB
            imgs = np.repeat(imgs[..., None], 3, axis=-1)
        if imgs.ndim != 4 or imgs.shape[-1] != 3 or len(imgs) != len(labels):
            raise SkinLesionError(
                f"{path.name}: {s}_images has shape {imgs.shape} and {s}_labels {len(labels)} entries; "
                "expected (N, H, W, 3) images with one label each."
            )
        bad = (labels < 0) | (labels >= len(CODES))
        if bad.any():
            raise SkinLesionError(
                f"{path.name}: {s}_labels holds {int(bad.sum())} value(s) outside 0..{len(CODES) - 1} "
                f"(the DermaMNIST order {', '.join(CODES)})."
            )
        if imgs.dtype != np.uint8:
            imgs = np.clip(imgs, 0, 255).astype(np.uint8)
        arrays.append(imgs)
        for j, lab in enumerate(labels):
            iid = f"{s}_{j:05d}"
            rows.append({"image_id": iid, "lesion_id": iid, "dx": CODES[int(lab)], "label": int(lab), "split": s, "index": offset + j})
        offset += len(labels)
    meta = pd.DataFrame(rows)
    warnings = []
    ids = _npz_ids(path.parent, meta)
    if ids is not None:  # DermaMNIST arrays beside the HAM10000 metadata: recover real ids
        meta["image_id"], meta["lesion_id"] = ids
    else:
        warnings.append(
            "A .npz file has no lesion_id: each image counts as its own lesion, so a "
            "lesion-grouped split cannot be made from it; use --kind official or the HAM10000 metadata."
        )
    return Dataset(root=path, layout="npz", meta=meta, arrays=np.concatenate(arrays), warnings=warnings)


def _npz_ids(folder: Path, meta: pd.DataFrame):
    """(image_id, lesion_id) for each npz row, when dermamnist_split.csv and the metadata lie beside it."""
    split_csv, meta_csv = folder / OFFICIAL_SPLIT_NAME, folder / METADATA_NAME
    if not (split_csv.exists() and meta_csv.exists()):
        return None
    try:
        official = pd.read_csv(split_csv, dtype={"image_id": str})
        lesions = pd.read_csv(meta_csv, dtype={"image_id": str, "lesion_id": str}).set_index("image_id")["lesion_id"]
        key = official.set_index([official["split"].str.lower(), official["index"].astype(int)])["image_id"]
        local = [int(i.split("_")[1]) for i in meta["image_id"]]
        image_ids = [key[(s, j)] for s, j in zip(meta["split"], local)]
        return image_ids, [lesions[i] for i in image_ids]
    except (KeyError, ValueError, IndexError):
        return None


def check_images(ds: Dataset, limit: int | None = None) -> list[str]:
    """Decode every image fully; return one sentence per unreadable file."""
    if ds.arrays is not None:
        return []
    problems = []
    for i, p in enumerate(ds.meta["path"]):
        if limit is not None and i >= limit:
            break
        try:
            load_rgb(p)
        except SkinLesionError as exc:
            problems.append(str(exc))
    return problems


def read_cache(path: Path):
    """Open a prepared cache (written by :mod:`skinlesion.data.prepare`) as a :class:`Dataset`, memory-mapped."""
    state = json.loads((path / "cache.json").read_text())
    if state["done"] < state["n"]:
        raise SkinLesionError(
            f"The cache {path} is incomplete ({state['done']} of {state['n']} images); rerun "
            f"`skinlesion prepare {state['source']} --size {state['size']} --out {path}` to finish it."
        )
    meta = pd.read_csv(path / "HAM10000_metadata.csv", dtype={"image_id": str, "lesion_id": str, "dx": str})
    arrays = np.load(path / "images.npy", mmap_mode="r")
    return Dataset(root=path, layout="cache", meta=meta, arrays=arrays)
