"""Read the ISIC datasets in the layouts they are downloaded in, recognised by their CSV files' columns.

Accepted (a folder, or one of its CSV files):

- **ISIC 2019** (the challenge's training set; its test ground truth reads the same way):
  ``ISIC_2019_Training_GroundTruth.csv`` (``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, one-hot
  ``1.0``/``0.0``), ``ISIC_2019_Training_Metadata.csv`` (``image,age_approx,anatom_site_general,
  lesion_id,sex``) and the images in ``ISIC_2019_Training_Input/``. Label set ``isic2019``. Rows with
  ``UNK`` set, or with no class, cannot be labelled: they are left out and counted in a warning.
  ``lesion_id`` groups the images; a row without one is its own group (counted in a warning).
  ``source`` is the lesion id's prefix (``HAM``, ``BCN``, ``MSK``): the contributing collection.
- **ISIC 2020**: ``train.csv`` from Kaggle or ``ISIC_2020_Training_GroundTruth[_v2].csv`` from the
  challenge (``image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,
  benign_malignant,target``), the duplicates list ``ISIC_2020_Training_Duplicates.csv``
  (``image_name_1,image_name_2``: one image of each group of duplicates is kept, the rest dropped and
  counted) and the JPEGs in ``train/`` (``jpeg/train/`` on Kaggle). Label set ``melanoma``
  (``target`` 1 is ``mel``, 0 ``other``). ``lesion_id`` is set to the patient id, so splits and folds
  group by patient; ``patient_id`` is kept (and v2's own lesion ids as ``isic_lesion_id``).
- **An isic-cli export** (``isic image download DIR``): ``DIR/metadata.csv`` (``isic_id,attribution,
  copyright_license`` then the metadata fields in alphabetical order: ``age_approx``,
  ``anatom_site_general`` or the hierarchical ``anatom_site_1..5``, ``diagnosis_1..5``, ``lesion_id``,
  ``patient_id``, ``sex``, ...), the images as ``DIR/ISIC_XXXXXXX.jpg``, ``attribution.txt`` and
  ``licenses/``. The diagnosis is the most specific ``diagnosis_k`` that the label set names
  (:meth:`skinlesion.classes.LabelSet.code_for`; the legacy ``diagnosis`` column where there is none);
  default label set ``isic2019`` (``read_isic_cli(..., label_set=...)`` chooses another). Images without
  one are left out and reported (count and first ids). Groups: ``lesion_id``, else ``patient_id``, else
  the image. ``attribution`` and ``copyright_license`` are kept; ``source`` is the attribution.

Every reader returns a :class:`skinlesion.data.ham10000.Dataset` whose ``meta`` has the columns the rest
of skinlesion reads: ``image_id, lesion_id, dx, label, age, sex, localization, path``; the files' other
columns are kept as they are, except those renamed (``image``/``image_name``/``isic_id`` -> ``image_id``,
``age_approx`` -> ``age``) and the label columns, which become ``dx`` and ``label``.

Body sites and sex are mapped onto HAM10000's vocabulary (:data:`skinlesion.posthoc.LOCALIZATIONS`,
``male``/``female``; ``unknown`` where missing): see :data:`SITES` and :data:`HIERARCHICAL_SITES`.
``head/neck`` becomes ``unknown``: HAM10000 tells face, scalp, ear and neck apart and the ISIC site
does not say which. Values outside these vocabularies become ``unknown`` too, with a warning.

Bad files are refused in one sentence (:class:`skinlesion.errors.SkinLesionError`): unreadable or
empty CSVs, missing columns, one-hot rows that are not one-hot, unknown diagnoses or targets, ages that
are not ages, duplicate ids, metadata that describes other images, and missing images (``--allow-missing``
drops those rows with a warning, as for HAM10000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import ISIC2019, MELANOMA, LabelSet, label_set as _label_set
from ..errors import SkinLesionError
from .dataset import Dataset, index_images

# ---- the layouts' files ---------------------------------------------------------------------------

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")  # one-hot columns, in the file's order
ISIC2019_GROUND_TRUTH = ("image", *ISIC2019_CLASSES, "UNK")
ISIC2019_METADATA = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
ISIC2020_COLUMNS = (
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
)
ISIC2020_DUPLICATES = ("image_name_1", "image_name_2")
ISIC_CLI_COLUMNS = ("isic_id", "attribution", "copyright_license")
DIAGNOSIS_LEVELS = tuple(f"diagnosis_{k}" for k in range(1, 6))
SITE_LEVELS = tuple(f"anatom_site_{k}" for k in range(1, 6))
DIAGNOSIS_TOP = ("benign", "malignant", "indeterminate")  # the ISIC Archive's diagnosis_1 vocabulary

LAYOUT_NAMES = {"isic2019": "ISIC 2019", "isic2020": "ISIC 2020", "isic-cli": "isic-cli export"}
IMAGE_FOLDERS = {"isic2019": ("ISIC_2019_Training_Input",), "isic2020": ("train", "jpeg/train"), "isic-cli": ()}
# an unreadable file is still recognised by its download name, so that it is refused as unreadable
KNOWN_NAMES = {
    "isic_2019_training_groundtruth.csv": "isic2019-groundtruth",
    "isic_2019_training_metadata.csv": "isic2019-metadata",
    "isic_2020_training_groundtruth.csv": "isic2020",
    "isic_2020_training_groundtruth_v2.csv": "isic2020",
    "isic_2020_training_duplicates.csv": "isic2020-duplicates",
}

# ---- vocabularies -----------------------------------------------------------------------------------

# ``anatom_site_general`` (ISIC 2019, isic-cli exports) and ``anatom_site_general_challenge`` (ISIC 2020)
SITES: dict[str, str | None] = {
    "anterior torso": "trunk",  # chest or abdomen: HAM10000's unspecific "trunk"
    "posterior torso": "back",
    "lateral torso": "trunk",
    "torso": "trunk",  # ISIC 2020
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "palms/soles": "acral",
    "oral/genital": "genital",
    "head/neck": None,  # face, scalp, ear or neck: HAM10000 tells them apart, the ISIC site does not
}
# the hierarchical ``anatom_site_1..5`` of newer isic-cli exports: the most specific level listed here with a
# site wins; levels not listed (e.g. "Forearm", "Shin") fall back to the level above them
HIERARCHICAL_SITES: dict[str, str | None] = {
    "head and neck": None,
    "head": None,
    "trunk": "trunk",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "anogenital region": "genital",
    "neck": "neck",
    "scalp": "scalp",
    "ear": "ear",
    "face": "face",
    "anterior trunk": "trunk",
    "lateral trunk": "trunk",
    "posterior trunk": "back",
    "anterior chest": "chest",
    "lateral chest": "chest",
    "anterior abdomen": "abdomen",
    "lateral abdomen": "abdomen",
    "upper back": "back",
    "mid back": "back",
    "lower back": "back",
    "hand": "hand",
    "palm of hand": "acral",
    "foot": "foot",
    "sole of foot": "acral",
    "genital region": "genital",
    "perianal region": "genital",
}
SEXES = ("male", "female")
UNKNOWN = "unknown"  # HAM10000's word for a missing sex or site


# ---- finding a layout -----------------------------------------------------------------------------


@dataclass
class Found:
    """An ISIC layout found in a folder: which, where its images are, and its CSV files by role."""

    layout: str  # "isic2019", "isic2020" or "isic-cli"
    root: Path  # the folder its images are under
    files: dict[str, Path] = field(default_factory=dict)  # role ("groundtruth", "metadata", "duplicates", "table") -> CSV


def layout_of_csv(csv: Path) -> Found | None:
    """The ISIC layout a CSV file belongs to (with its sibling files), or None when its columns are no ISIC layout's."""
    kind = csv_kind(csv)
    if kind is None:
        return None
    siblings = _kinds_in(csv.parent)
    if kind == "isic2019-groundtruth":
        return Found("isic2019", csv.parent, {"groundtruth": csv, **_pick_metadata(siblings)})
    if kind == "isic2019-metadata":
        gts = siblings.get("isic2019-groundtruth", [])
        if not gts:
            raise SkinLesionError(
                f"{csv.name} is ISIC 2019 metadata without labels, and no ISIC_2019_Training_GroundTruth.csv lies beside it; "
                "download the ground truth into the same folder."
            )
        return Found("isic2019", csv.parent, {"groundtruth": gts[0], "metadata": csv})
    if kind == "isic2020-duplicates":
        raise SkinLesionError(
            f"{csv.name} is the ISIC 2020 list of duplicate images, not a dataset; pass train.csv "
            "(or ISIC_2020_Training_GroundTruth.csv) or the folder that holds it."
        )
    if kind == "isic2020":
        return Found("isic2020", csv.parent, {"table": csv, **_pick_duplicates(siblings)})
    return Found("isic-cli", csv.parent, {"table": csv})


def find_layout(folder: Path, depth: int = 0) -> Found | None:
    """The ISIC layout whose CSV files lie in ``folder`` (``depth`` 1: in one of its sub-folders), or None."""
    folders = [folder] if depth == 0 else sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for f in folders:
        found = _layout_in(f)
        if found is not None:
            return found
    return None


def _layout_in(folder: Path) -> Found | None:
    kinds = _kinds_in(folder)
    if len({k.split("-")[0] if k != "isic-cli" else k for k in kinds}) > 1:
        names = ", ".join(sorted(p.name for ps in kinds.values() for p in ps))
        raise SkinLesionError(
            f"{folder} holds the CSV files of more than one ISIC layout ({names}); keep each dataset in its own folder "
            "or pass the CSV file to read."
        )
    if "isic2019-groundtruth" in kinds:
        return Found("isic2019", folder, {"groundtruth": kinds["isic2019-groundtruth"][0], **_pick_metadata(kinds)})
    if "isic2019-metadata" in kinds:
        return layout_of_csv(kinds["isic2019-metadata"][0])  # refused there: it has no labels
    if "isic2020" in kinds:
        return Found("isic2020", folder, {"table": _pick_2020_table(kinds["isic2020"]), **_pick_duplicates(kinds)})
    if "isic2020-duplicates" in kinds:
        raise SkinLesionError(
            f"{folder} holds the ISIC 2020 duplicates list but no train.csv (or ISIC_2020_Training_GroundTruth.csv); "
            "download the ground truth into the same folder."
        )
    if "isic-cli" in kinds:
        tables = kinds["isic-cli"]
        named = [p for p in tables if p.name == "metadata.csv"]
        return Found("isic-cli", folder, {"table": (named or tables)[0]})
    return None


def csv_kind(csv: Path) -> str | None:
    """Which ISIC file ``csv`` is, from its header's columns (its download name where the header cannot be read)."""
    columns = _header(csv)
    if columns is None:
        return KNOWN_NAMES.get(csv.name.lower())
    if set(ISIC2020_DUPLICATES) <= columns:
        return "isic2020-duplicates"
    if "isic_id" in columns:
        return "isic-cli"
    if "image_name" in columns:
        return "isic2020"
    if "image" in columns:
        if columns & {*ISIC2019_CLASSES, "UNK"}:
            return "isic2019-groundtruth"
        if columns & set(ISIC2019_METADATA[1:]):
            return "isic2019-metadata"
    return None


def _header(csv: Path) -> set[str] | None:
    from .csvfile import sniff_separator

    try:  # a file separated by ';' is still recognised by its columns (and refused, saying so, when read)
        return {str(c).strip().lstrip("\ufeff") for c in pd.read_csv(csv, nrows=0, sep=sniff_separator(csv) or ",").columns}
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _kinds_in(folder: Path) -> dict[str, list[Path]]:
    kinds: dict[str, list[Path]] = {}
    for p in sorted(folder.glob("*.csv")):
        if p.is_file():
            kind = csv_kind(p)
            if kind is not None:
                kinds.setdefault(kind, []).append(p)
    return kinds


def _pick_metadata(kinds: dict[str, list[Path]]) -> dict[str, Path]:
    """The ISIC 2019 metadata among several (the training file, the one with lesion ids, first)."""
    found = kinds.get("isic2019-metadata", [])
    if not found:
        return {}
    found = sorted(found, key=lambda p: ("training" not in p.name.lower(), "lesion_id" not in (_header(p) or set()), p.name))
    return {"metadata": found[0]}


def _pick_duplicates(kinds: dict[str, list[Path]]) -> dict[str, Path]:
    found = kinds.get("isic2020-duplicates", [])
    return {"duplicates": found[0]} if found else {}


def _pick_2020_table(tables: list[Path]) -> Path:
    """The labelled ISIC 2020 table: all columns first (so test.csv and sample_submission.csv lose), v2 before v1."""

    def rank(p: Path):
        cols = _header(p) or set()
        return (-len(cols & set(ISIC2020_COLUMNS)), "lesion_id" not in cols, p.name)

    return sorted(tables, key=rank)[0]


# ---- reading --------------------------------------------------------------------------------------


def read_layout(found: Found, *, allow_missing: bool = False, label_set: LabelSet | str | None = None, images: bool = True) -> Dataset:
    """Read a found layout. ``label_set`` chooses an isic-cli export's (ISIC 2019's and 2020's are fixed);
    ``images=False`` reads the labels and metadata only (no ``path`` column, no image needed)."""
    own = {"isic2019": ISIC2019, "isic2020": MELANOMA}.get(found.layout)
    if own is not None and label_set is not None:
        chosen = _label_set(label_set) if isinstance(label_set, str) else label_set
        if chosen.codes != own.codes:
            raise SkinLesionError(
                f"{LAYOUT_NAMES[found.layout]} is labelled in its own label set ({own.name}: {', '.join(own.codes)}), not {chosen.name}; "
                "read it as it is and map its classes onto another set where a model needs that."
            )
    if found.layout == "isic2019":
        return read_isic2019(found.files["groundtruth"], found.files.get("metadata"), allow_missing=allow_missing, images=images)
    if found.layout == "isic2020":
        return read_isic2020(found.files["table"], found.files.get("duplicates"), allow_missing=allow_missing, images=images)
    return read_isic_cli(found.files["table"], allow_missing=allow_missing, label_set=label_set or ISIC2019, images=images)


def read_table(csv: Path, label_set: LabelSet | str | None = None) -> Dataset | None:
    """The labels and metadata of an ISIC layout's CSV file without its images (for ``split`` on a CSV), or None."""
    found = layout_of_csv(Path(csv))
    return None if found is None else read_layout(found, label_set=label_set, images=False)


def read_isic2019(ground_truth: Path, metadata: Path | None = None, *, allow_missing: bool = False, images: bool = True) -> Dataset:
    """ISIC 2019: one-hot ground truth joined with its metadata by ``image``; see the module docstring."""
    gt = _read_csv(ground_truth, "the ISIC 2019 ground truth")
    _require(gt, ground_truth, ISIC2019_GROUND_TRUTH[:-1], "an ISIC 2019 ground truth")
    _unique(gt, "image", ground_truth)
    classes = [c for c in (*ISIC2019_CLASSES, "UNK") if c in gt.columns]
    onehot = _onehot(gt, classes, ground_truth)
    warnings: list[str] = []
    labelled = onehot[:, : len(ISIC2019_CLASSES)].sum(axis=1) == 1
    if not labelled.all():
        unk = onehot[:, -1] == 1 if "UNK" in classes else np.zeros(len(gt), bool)
        ids = gt.loc[~labelled, "image"].tolist()
        none = ~labelled & ~unk
        # a 0/1 column the label set does not know (e.g. XYZ): its rows have "no class" here, so it is named
        unknown = [c for c in gt.columns if c not in ("image", *classes) and gt[c].isin(["0", "1", "0.0", "1.0"]).all()]
        marked = {c: int((none & (pd.to_numeric(gt[c]) == 1).to_numpy()).sum()) for c in unknown}
        marked = {c: k for c, k in marked.items() if k}
        also = (
            f" ({', '.join(f'{k} marked {c}' for c, k in marked.items())}: a class column the isic2019 label set does not know)"
            if marked
            else ""
        )
        warnings.append(
            f"{len(ids)} of {len(gt)} images in {ground_truth.name} cannot be labelled ({int(unk.sum())} marked UNK, "
            f"{int(none.sum())} with no class{also}; first: {', '.join(ids[:5])}); they were left out."
        )
    if not labelled.any():
        raise SkinLesionError(
            f"None of the {len(gt)} images in {ground_truth.name} has one of the classes {', '.join(ISIC2019_CLASSES)} set, "
            "so none can be labelled; use a ground truth with a 1 in one class column per image."
        )
    codes = [ISIC2019.code_for(c) for c in ISIC2019_CLASSES]
    dx = [codes[int(j)] for j in onehot[:, : len(ISIC2019_CLASSES)].argmax(axis=1)]
    meta = pd.DataFrame({"image_id": gt["image"], "dx": dx})
    meta["label"] = [ISIC2019.index(c) for c in dx]
    meta = meta.loc[labelled].reset_index(drop=True)

    if metadata is None:
        warnings.append(
            f"No ISIC_2019_Training_Metadata.csv beside {ground_truth.name}: without lesion ids each image counts as its own "
            "lesion (a lesion-grouped split cannot be made) and age, sex and site are unknown; download it into the same folder."
        )
        extra = pd.DataFrame({"image": meta["image_id"]})
    else:
        extra = _read_csv(metadata, "the ISIC 2019 metadata")
        _require(extra, metadata, ("image",), "an ISIC 2019 metadata file")
        _unique(extra, "image", metadata)
        described = meta["image_id"].isin(set(extra["image"]))
        if not described.any():
            raise SkinLesionError(
                f"{metadata.name} describes none of the images in {ground_truth.name} (first: {', '.join(meta['image_id'][:3])}); "
                "it is another set's metadata: use the one downloaded with this ground truth."
            )
        if not described.all():
            ids = meta.loc[~described, "image_id"].tolist()
            warnings.append(
                f"{len(ids)} of {len(meta)} images of {ground_truth.name} have no row in {metadata.name} (first: {', '.join(ids[:5])}); "
                "their age, sex and site are unknown and each counts as its own lesion."
            )
    meta = meta.merge(extra.rename(columns={"image": "image_id"}), on="image_id", how="left")
    # the contributing collection, from the lesion id's prefix: HAM_0000118 -> HAM, BCN_0000001 -> BCN, MSK4_0011169 -> MSK
    meta["source"] = _column(meta, "lesion_id").str.extract(r"^([A-Za-z]+)\d*_", expand=False)
    meta["lesion_id"] = _groups(meta, "lesion_id", ground_truth.name, warnings, "have no lesion_id", "lesion")
    _patient_fields(meta, metadata or ground_truth, warnings, site_column="anatom_site_general")
    ds = Dataset(root=ground_truth.parent, layout="isic2019", meta=_ordered(meta), warnings=warnings, label_set=ISIC2019)
    return _with_images(ds, ground_truth, allow_missing) if images else ds


def read_isic2020(table: Path, duplicates: Path | None = None, *, allow_missing: bool = False, images: bool = True) -> Dataset:
    """ISIC 2020: melanoma (``target`` 1) vs other, grouped by patient, one image of each listed duplicate group kept."""
    t = _read_csv(table, "the ISIC 2020 table")
    if "target" not in t.columns and "patient_id" in t.columns and "benign_malignant" not in t.columns:
        raise SkinLesionError(
            f"{table.name} has no target column: it is the ISIC 2020 test set, which is published without labels; "
            "pass train.csv (or ISIC_2020_Training_GroundTruth.csv)."
        )
    _require(t, table, ISIC2020_COLUMNS, "an ISIC 2020 training table")
    _unique(t, "image_name", table)
    target = pd.to_numeric(t["target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        raise SkinLesionError(
            f"{table.name} has {int(bad.sum())} row(s) whose target is not 0 or 1 (first: {t.loc[bad, 'image_name'].iat[0]} "
            f"with {t.loc[bad, 'target'].iat[0]!r}); target must be 1 for melanoma and 0 otherwise."
        )
    bm = t["benign_malignant"].fillna("").str.strip().str.lower()
    if not bm.isin(["benign", "malignant", ""]).all():
        odd = bm[~bm.isin(["benign", "malignant", ""])]
        raise SkinLesionError(
            f"{table.name} has unknown benign_malignant value(s) {', '.join(repr(v) for v in odd.unique()[:5])}; use benign or malignant."
        )
    disagree = (bm != "") & ((bm == "malignant") != (target == 1))
    if disagree.any():
        raise SkinLesionError(
            f"{table.name} has {int(disagree.sum())} row(s) whose benign_malignant contradicts target (first: "
            f"{t.loc[disagree, 'image_name'].iat[0]}); fix the file or re-download it."
        )
    codes = [MELANOMA.code_for("melanoma") if v == 1 else "other" for v in target]
    meta = t.drop(columns=["target"]).rename(columns={"image_name": "image_id"})
    if "lesion_id" in meta.columns:
        meta = meta.rename(columns={"lesion_id": "isic_lesion_id"})
    meta.insert(1, "dx", codes)
    meta.insert(2, "label", [MELANOMA.index(c) for c in codes])
    warnings: list[str] = []
    if duplicates is None:
        warnings.append(
            f"No ISIC_2020_Training_Duplicates.csv beside {table.name}: the images ISIC lists as duplicates were not dropped, and a "
            "duplicate under another patient id can land in another split; download it from the ISIC challenge site."
        )
    else:
        meta = _drop_duplicates(meta, duplicates, table, warnings)
    meta["lesion_id"] = _groups(meta, "patient_id", table.name, warnings, "have no patient_id", "patient")
    _patient_fields(meta, table, warnings, site_column="anatom_site_general_challenge")
    ds = Dataset(root=table.parent, layout="isic2020", meta=_ordered(meta), warnings=warnings, label_set=MELANOMA)
    return _with_images(ds, table, allow_missing) if images else ds


def read_isic_cli(table: Path, *, allow_missing: bool = False, label_set: LabelSet | str = ISIC2019, images: bool = True) -> Dataset:
    """An isic-cli export: the most specific ``diagnosis_k`` that ``label_set`` names is each image's class."""
    labels = _label_set(label_set) if isinstance(label_set, str) else label_set
    t = _read_csv(table, "the isic-cli metadata")
    _require(t, table, ISIC_CLI_COLUMNS, "an isic-cli metadata export")
    levels = [c for c in DIAGNOSIS_LEVELS if c in t.columns]
    if not levels and "diagnosis" not in t.columns:
        raise SkinLesionError(
            f"{table.name} has no diagnosis columns (diagnosis_1 ... diagnosis_5); export the images' clinical metadata with isic-cli."
        )
    _unique(t, "isic_id", table)
    if "diagnosis_1" in t.columns:
        top = _column(t, "diagnosis_1")
        odd = top.notna() & ~top.str.lower().isin(DIAGNOSIS_TOP)
        if odd.any():
            listed = ", ".join(f"{v!r} ({n} row{'s' if n != 1 else ''})" for v, n in top[odd].value_counts().head(5).items())
            raise SkinLesionError(
                f"{table.name} has unknown diagnosis_1 value(s) {listed}; the ISIC Archive's diagnosis_1 is Benign, Malignant or Indeterminate."
            )
    codes = [_most_specific(row, labels) for row in t[levels].itertuples(index=False)] if levels else [None] * len(t)
    if "diagnosis" in t.columns:  # the legacy flat diagnosis, where no diagnosis_k is named by the label set
        codes = [c if c is not None else _code(labels, d) for c, d in zip(codes, t["diagnosis"])]
    known = pd.Series([c is not None for c in codes], index=t.index)
    warnings: list[str] = []
    if not known.any():
        raise SkinLesionError(
            f"None of the {len(t)} images in {table.name} has a diagnosis that the {labels.name} label set names "
            f"(first: {', '.join(t['isic_id'][:3])}); choose another label set or export other images."
        )
    if not known.all():
        ids = t.loc[~known, "isic_id"].tolist()
        warnings.append(
            f"{len(ids)} of {len(t)} images in {table.name} have no diagnosis that the {labels.name} label set names "
            f"(first: {', '.join(ids[:5])}); they were left out."
        )
    meta = t.rename(columns={"isic_id": "image_id"})
    meta.insert(1, "dx", codes)
    meta = meta.loc[known].reset_index(drop=True)
    meta.insert(2, "label", [labels.index(c) for c in meta["dx"]])
    group, patient = _column(meta, "lesion_id"), _column(meta, "patient_id")
    by_patient = group.isna() & patient.notna()
    if by_patient.any():
        warnings.append(
            f"{int(by_patient.sum())} of {len(meta)} images in {table.name} have no lesion_id but a patient_id; "
            "they are grouped by patient in splits and folds."
        )
    meta["lesion_id"] = group.fillna(patient)
    meta["lesion_id"] = _groups(meta, "lesion_id", table.name, warnings, "have neither a lesion_id nor a patient_id", "lesion")
    meta["source"] = _column(meta, "attribution")
    site_column = "anatom_site_general" if "anatom_site_general" in meta.columns else None
    _patient_fields(meta, table, warnings, site_column=site_column)
    if any(c in meta.columns for c in SITE_LEVELS):
        hierarchical = _hierarchical_sites(meta, table, warnings)
        meta["localization"] = hierarchical.where(hierarchical != UNKNOWN, meta["localization"])
    ds = Dataset(root=table.parent, layout="isic-cli", meta=_ordered(meta), warnings=warnings, label_set=labels)
    return _with_images(ds, table, allow_missing) if images else ds


# ---- labels ---------------------------------------------------------------------------------------


def _onehot(gt: pd.DataFrame, classes: list[str], csv: Path) -> np.ndarray:
    """The one-hot block as 0/1 integers; refuses values that are not 0 or 1 and rows with more than one class."""
    values = gt[classes].apply(pd.to_numeric, errors="coerce")
    bad = (~values.isin([0, 1])).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SkinLesionError(
            f"{csv.name} has {int(bad.sum())} row(s) whose class columns are not one-hot 0/1 values (first: {gt['image'].iat[i]} "
            f"at line {i + 2}: {', '.join(f'{c}={gt[c].iat[i]}' for c in classes)}); each row needs a 1 in exactly one column."
        )
    onehot = values.to_numpy().astype(int)
    several = onehot.sum(axis=1) > 1
    if several.any():
        i = int(np.flatnonzero(several)[0])
        marked = [c for c, v in zip(classes, onehot[i]) if v]
        raise SkinLesionError(
            f"{csv.name} has {int(several.sum())} row(s) that are not one-hot, with more than one class set "
            f"(first: {gt['image'].iat[i]} at line {i + 2}: {', '.join(marked)}); each row needs a 1 in exactly one column."
        )
    return onehot


def _most_specific(levels, labels: LabelSet) -> str | None:
    for name in reversed(tuple(levels)):
        code = _code(labels, name)
        if code is not None:
            return code
    return None


def _code(labels: LabelSet, name) -> str | None:
    return labels.code_for(name) if isinstance(name, str) and name.strip() else None


# ---- groups, duplicates -------------------------------------------------------------------------


def _groups(meta: pd.DataFrame, column: str, name: str, warnings: list[str], missing_words: str, unit: str) -> pd.Series:
    """``column`` as the grouping key; a row without one is its own group, counted in a warning."""
    key = _column(meta, column)
    alone = key.isna()
    if alone.any():
        warnings.append(
            f"{int(alone.sum())} of {len(meta)} images in {name} {missing_words}; each counts as its own {unit} in splits and folds."
        )
    return key.fillna(meta["image_id"]).astype(str).str.strip()


def _drop_duplicates(meta: pd.DataFrame, duplicates: Path, table: Path, warnings: list[str]) -> pd.DataFrame:
    """Keep one image of each group of listed duplicates (pairs chain into groups): the one met first in the list."""
    pairs = _read_csv(duplicates, "the ISIC 2020 duplicates list")
    _require(pairs, duplicates, ISIC2020_DUPLICATES, "the ISIC 2020 duplicates list")
    ids = set(meta["image_id"])
    listed = pairs[list(ISIC2020_DUPLICATES)].dropna()
    listed = listed[listed["image_name_1"].isin(ids) & listed["image_name_2"].isin(ids)]
    if len(pairs) and listed.empty:
        raise SkinLesionError(
            f"{duplicates.name} lists none of the images in {table.name}; it belongs to another set: use the one downloaded with it."
        )
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    order: dict[str, int] = {}
    for a, b in listed.itertuples(index=False):
        order.setdefault(a, len(order)), order.setdefault(b, len(order))
        ra, rb = root(a), root(b)
        if ra != rb:
            keep, drop = (ra, rb) if order[ra] < order[rb] else (rb, ra)
            parent[drop] = keep
    dropped = {x for x in parent if root(x) != x}
    warnings.append(
        f"{len(dropped)} duplicate images listed in {duplicates.name} were dropped (one image of each of "
        f"{len({root(x) for x in parent})} duplicate groups kept)."
    )
    return meta.loc[~meta["image_id"].isin(dropped)].reset_index(drop=True)


# ---- age, sex, site -----------------------------------------------------------------------------


def _warn_outside(values: pd.Series, allowed, what: str, then: str, warnings: list[str]) -> None:
    """One warning counting the values outside ``allowed`` (the first five of them named)."""
    odd = values.notna() & ~values.isin(list(allowed))
    if odd.any():
        warnings.append(f"{int(odd.sum())} {what} ({', '.join(repr(v) for v in values[odd].unique()[:5])}); {then}.")


def _patient_fields(meta: pd.DataFrame, csv: Path, warnings: list[str], site_column: str | None) -> None:
    """``age`` from ``age_approx``, ``sex`` and ``localization`` in HAM10000's vocabulary (in place)."""
    if "age_approx" in meta.columns:
        meta["age"] = _ages(meta["age_approx"], meta["image_id"], csv)
        del meta["age_approx"]
    else:
        meta["age"] = np.nan
    sex = _column(meta, "sex").str.lower()
    _warn_outside(sex, SEXES, f"images in {csv.name} have a sex other than male or female", "it is taken as unknown", warnings)
    meta["sex"] = sex.where(sex.isin(SEXES), UNKNOWN)
    if site_column is None or site_column not in meta.columns:
        meta["localization"] = UNKNOWN
        return
    site = _column(meta, site_column).str.lower()
    what = f"images in {csv.name} have a {site_column} outside the ISIC vocabulary"
    _warn_outside(site, SITES, what, "their body site is taken as unknown", warnings)
    meta["localization"] = site.map(lambda s: SITES.get(s) if isinstance(s, str) else None).fillna(UNKNOWN)


def _hierarchical_sites(meta: pd.DataFrame, csv: Path, warnings: list[str]) -> pd.Series:
    cols = [c for c in SITE_LEVELS if c in meta.columns]
    out = []
    for row in meta[cols].itertuples(index=False):
        site = None
        for name in reversed(tuple(row)):
            key = name.strip().lower() if isinstance(name, str) else ""
            if HIERARCHICAL_SITES.get(key):
                site = HIERARCHICAL_SITES[key]
                break
        out.append(site or UNKNOWN)
    if "anatom_site_1" in meta.columns:
        top = _column(meta, "anatom_site_1").str.lower()
        what = f"images in {csv.name} have an anatom_site_1 outside the ISIC hierarchy"
        _warn_outside(top, HIERARCHICAL_SITES, what, "their body site is taken as unknown", warnings)
    return pd.Series(out, index=meta.index)


def _ages(values: pd.Series, ids: pd.Series, csv: Path) -> pd.Series:
    given = _present(values)
    age = pd.to_numeric(values.where(given), errors="coerce")
    bad = given & (age.isna() | (age < 0) | (age > 120))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SkinLesionError(
            f"{csv.name} has {int(bad.sum())} age_approx value(s) that are not ages from 0 to 120 (first: {values.iat[i]!r} "
            f"for {ids.iat[i]}); leave unknown ages empty."
        )
    return age.astype(float)


# ---- images -------------------------------------------------------------------------------------


def _with_images(ds: Dataset, csv: Path, allow_missing: bool) -> Dataset:
    """``ds`` with a ``path`` per image: its layout's image folder first, then anywhere under the CSV's folder."""
    root = ds.root
    images: dict[str, Path] = {}
    for sub in IMAGE_FOLDERS[ds.layout]:
        if (root / sub).is_dir():
            images.update({k: v for k, v in index_images(root / sub).items() if k not in images})
    for k, v in index_images(root).items():
        images.setdefault(k, v)
    meta = ds.meta
    meta["path"] = meta["image_id"].map(lambda i: str(images[i]) if i in images else None)
    missing = meta["path"].isna()
    where = f"{root / IMAGE_FOLDERS[ds.layout][0]}/" if IMAGE_FOLDERS[ds.layout] else f"{root}/"
    if missing.all():
        raise SkinLesionError(
            f"None of the {len(meta)} images listed in {csv.name} were found under {root}; put the image files "
            f"({meta['image_id'].iat[0]}.jpg, ...) in {where}."
        )
    if missing.any():
        ids = meta.loc[missing, "image_id"].tolist()
        msg = f"{len(ids)} of {len(meta)} images listed in {csv.name} are missing under {root} (first: {', '.join(ids[:5])})"
        if not allow_missing:
            raise SkinLesionError(msg + "; add the files, or pass --allow-missing to drop those rows.")
        ds.warnings.append(msg + "; those rows were dropped (--allow-missing).")
        meta = meta.loc[~missing].reset_index(drop=True)
    ds.meta = meta
    return ds


# ---- CSV helpers --------------------------------------------------------------------------------


def _read_csv(csv: Path, what: str) -> pd.DataFrame:
    """``csv`` as strings, columns stripped; one sentence when it is empty or cannot be read."""
    from .csvfile import read_csv

    try:
        table = read_csv(csv, what, dtype=str)  # not UTF-8, empty, separated by ';': one sentence saying the fix
    except (pd.errors.ParserError, ValueError) as exc:
        detail = re.sub(r"\.\s+", "; ", str(exc).strip().rstrip("."))  # pandas: "Error tokenizing data. C error: ..."
        raise SkinLesionError(f"{csv} is not a readable CSV file ({detail}); re-download {what}.") from None
    except OSError as exc:
        raise SkinLesionError(f"{csv} cannot be read ({exc.strerror or exc}); check the file and its permissions.") from None
    table.columns = [str(c).strip() for c in table.columns]
    if len(table) == 0:
        raise SkinLesionError(f"{csv.name} has no rows; it should be {what}, one image per row.")
    for col in table.columns:
        table[col] = table[col].str.strip()
    return table


def _require(table: pd.DataFrame, csv: Path, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SkinLesionError(
            f"{csv.name} lacks the column(s) {', '.join(missing)}; {what} has the columns {', '.join(columns)} "
            f"(found: {', '.join(table.columns) or 'none'})."
        )


def _unique(table: pd.DataFrame, column: str, csv: Path) -> None:
    blank = ~_present(table[column])
    if blank.any():
        raise SkinLesionError(
            f"{csv.name} has {int(blank.sum())} row(s) with an empty {column} (first at line "
            f"{int(np.flatnonzero(blank.to_numpy())[0]) + 2}); fill them in or remove them."
        )
    dup = table[column][table[column].duplicated()]
    if len(dup):
        raise SkinLesionError(
            f"{csv.name} lists {len(dup)} duplicate {column}(s) (first: {', '.join(dup.unique()[:5])}); each image must appear once."
        )


def _present(values: pd.Series) -> pd.Series:
    return values.notna() & (values.astype(str).str.strip() != "")


def _column(table: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as stripped strings with NaN where empty (all NaN where the table lacks it)."""
    if column not in table.columns:
        return pd.Series(np.nan, index=table.index, dtype=object)
    values = table[column].astype(object)
    return values.where(_present(values)).str.strip()


def _ordered(meta: pd.DataFrame) -> pd.DataFrame:
    first = ["image_id", "lesion_id", "dx", "label", "age", "sex", "localization"]
    return meta[first + [c for c in meta.columns if c not in first]]
