"""Synthetic datasets for tests and demos, in the layouts of the real downloads.

``write_synthetic(root)`` writes ``HAM10000_metadata.csv`` and 600x450 JPEGs in the
Kaggle layout (``HAM10000_images_part_1/2`` plus an ignored ``hmnist_28_28_RGB.csv``)
or a flat ``images/`` folder. Lesions have a real-looking multiplicity (most one
image, some two to four) and the seven classes differ visibly, in colour, shape and
texture, so a small model learns them in a few epochs. Nothing here is medical.

The ISIC layouts (read by :mod:`skinlesion.data.isic_layouts`), with the downloads' exact file and
column names and their quirks (one-hot ``1.0``/``0.0``, empty cells, ``_downsampled`` image names,
images without a lesion id, listed duplicates, unlabelled archive images):

- ``write_isic2019(root)``: the ISIC 2019 training set's ground truth, metadata and input folder;
- ``write_isic2020(root)``: ISIC 2020's ``train.csv``, duplicates list and ``train/`` JPEGs;
- ``write_isic_cli(root)``: what ``isic image download root`` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from ..classes import CODES, ISIC2019

# per class: lesion RGB colour, shape ("round", "oval", "blotch", "star"), texture
_LOOK = {
    "akiec": ((200, 90, 80), "blotch", "scales"),
    "bcc": ((230, 170, 170), "round", "vessels"),
    "bkl": ((150, 110, 60), "oval", "stripes"),
    "df": ((180, 120, 100), "round", "ring"),
    "mel": ((40, 25, 30), "star", "dots"),
    "nv": ((120, 70, 40), "round", "plain"),
    "vasc": ((170, 20, 50), "oval", "lobes"),
    "ak": ((200, 90, 80), "blotch", "scales"),  # ISIC 2019's AK: HAM10000's akiec without Bowen's disease
    "scc": ((215, 165, 120), "blotch", "crust"),
}
# HAM10000-like imbalance, but every class present
_WEIGHTS = np.array([0.05, 0.07, 0.11, 0.03, 0.11, 0.58, 0.05])
_LOCALIZATIONS = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp"]


def _draw(code: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    skin = np.array([225, 180, 150]) + rng.integers(-20, 20, 3)
    base = np.ones((h, w, 3)) * skin + rng.normal(0, 6, (h, w, 1))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    colour, shape, texture = _LOOK[code]
    colour = tuple(int(np.clip(c + rng.integers(-15, 15), 0, 255)) for c in colour)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    r = min(w, h) * rng.uniform(0.22, 0.32)
    if shape == "round":
        box = [cx - r, cy - r, cx + r, cy + r]
        d.ellipse(box, fill=colour)
    elif shape == "oval":
        box = [cx - 1.4 * r, cy - 0.7 * r, cx + 1.4 * r, cy + 0.7 * r]
        d.ellipse(box, fill=colour)
    else:
        n = 14 if shape == "star" else 9
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * (rng.uniform(0.45, 1.25, n) if shape == "star" else rng.uniform(0.8, 1.1, n))
        d.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang)], fill=colour)
    dark = tuple(max(0, c - 70) for c in colour)
    light = tuple(min(255, c + 70) for c in colour)
    if texture == "dots":
        for _ in range(40):
            x, y = cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(90, 70, 160))
    elif texture == "stripes":
        for k in range(-4, 5):
            d.line([cx - r, cy + k * r / 5, cx + r, cy + k * r / 5 + 10], fill=dark, width=5)
    elif texture == "vessels":
        for _ in range(8):
            pts = [(cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8) for _ in range(4)]
            d.line(pts, fill=(200, 20, 30), width=3)
    elif texture == "ring":
        d.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=light)
    elif texture == "scales":
        for _ in range(60):
            x, y = cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8
            d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=(245, 235, 220))
    elif texture == "lobes":
        for _ in range(5):
            x, y = cx + rng.uniform(-r, r) * 0.7, cy + rng.uniform(-r, r) * 0.4
            d.ellipse([x - r / 4, y - r / 4, x + r / 4, y + r / 4], fill=(110, 0, 30))
    elif texture == "crust":
        for _ in range(4):
            x, y = cx + rng.uniform(-r, r) * 0.5, cy + rng.uniform(-r, r) * 0.5
            d.ellipse([x - r / 3, y - r / 5, x + r / 3, y + r / 5], fill=(240, 220, 140), outline=dark, width=4)
    return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 300)))


def write_synthetic(
    root: str | Path,
    n_lesions: int = 60,
    *,
    layout: str = "kaggle",
    size: tuple[int, int] = (600, 450),
    seed: int = 0,
    min_per_class: int = 3,
) -> Path:
    """Write a synthetic HAM10000-shaped dataset under ``root`` and return ``root``.

    ``layout`` is ``"kaggle"`` (two image-part folders plus hmnist CSV) or ``"flat"``
    (an ``images/`` folder). Each lesion has one image (about 70 %) or two to four.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = np.maximum(np.round(_WEIGHTS * n_lesions).astype(int), min_per_class)
    lesion_dx = np.repeat(np.arange(len(CODES)), counts)
    rng.shuffle(lesion_dx)
    rows = []
    img_no = 24306  # ISIC ids start where HAM10000's do
    for li, lab in enumerate(lesion_dx):
        mult = int(rng.choice([1, 2, 3, 4], p=[0.7, 0.18, 0.08, 0.04]))
        age = float(rng.integers(3, 17) * 5)
        sex = str(rng.choice(["male", "female"]))
        loc = str(rng.choice(_LOCALIZATIONS))
        for _ in range(mult):
            rows.append(
                {
                    "lesion_id": f"HAM_{li:07d}",
                    "image_id": f"ISIC_{img_no:07d}",
                    "dx": CODES[lab],
                    "dx_type": "histo" if CODES[lab] in ("mel", "bcc", "akiec") else "follow_up",
                    "age": age,
                    "sex": sex,
                    "localization": loc,
                }
            )
            img_no += 1
    meta = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    if layout == "kaggle":
        folders = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
        (root / "hmnist_28_28_RGB.csv").write_text("pixel0000,label\n0,0\n")
    elif layout == "flat":
        folders = [root / "images"]
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'kaggle' or 'flat'")
    for f in folders:
        f.mkdir(exist_ok=True)
    for k, row in meta.iterrows():
        img = _draw(row["dx"], rng, size)
        img.save(folders[k % len(folders)] / f"{row['image_id']}.jpg", quality=90)
    return root


# ---- the ISIC layouts ---------------------------------------------------------------------------

# ISIC 2019's class shares (MEL, NV, BCC, AK, BKL, DF, VASC, SCC), every class present
_ISIC2019_WEIGHTS = np.array([0.18, 0.51, 0.13, 0.034, 0.10, 0.01, 0.01, 0.025])
_SITES_2019 = [
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "upper extremity",
    "lower extremity",
    "head/neck",
    "palms/soles",
    "oral/genital",
]
_SITES_2020 = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]
_BENIGN_2020 = ["unknown"] * 6 + ["nevus", "seborrheic keratosis", "lentigo NOS", "lichenoid keratosis", "solar lentigo"]
_ATTRIBUTIONS = [
    "ViDIR Group, Department of Dermatology, Medical University of Vienna",
    "Hospital Clínic de Barcelona",
    "Memorial Sloan Kettering Cancer Center",
    "Anonymous",
]
_LICENSES = ["CC-BY-NC", "CC-BY", "CC-0"]
# the ISIC Archive's hierarchical diagnosis (diagnosis_1 ... diagnosis_5), per ISIC 2019 class
_HIERARCHY = {
    "mel": [
        ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", "Melanoma Invasive, Superficial spreading"),
        ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ"),
    ],
    "nv": [
        ("Benign", "Benign melanocytic proliferations", "Nevus"),
        ("Benign", "Benign melanocytic proliferations", "Nevus", "Nevus, NOS, Compound"),
        ("Benign", "Benign melanocytic proliferations", "Nevus", "Blue nevus", "Blue nevus, Common"),
    ],
    "bcc": [
        ("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma"),
        ("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma", "Basal cell carcinoma, Nodular"),
    ],
    "ak": [("Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis", "Actinic keratosis, Hypertrophic")],
    "bkl": [
        ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
        ("Benign", "Benign epidermal proliferations", "Solar lentigo"),
        ("Benign", "Benign epidermal proliferations", "Pigmented benign keratosis"),
    ],
    "df": [("Benign", "Benign soft tissue proliferations - Fibro-histiocytic", "Dermatofibroma")],
    "vasc": [
        ("Benign", "Benign soft tissue proliferations - Vascular", "Hemangioma"),
        ("Benign", "Benign soft tissue proliferations - Vascular", "Angiokeratoma"),
    ],
    "scc": [("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma in situ")],
}
# archive images whose diagnosis names no ISIC 2019 class (the reader reports and leaves them out)
_UNLABELLED = [
    ("Benign",),
    ("Indeterminate", "Indeterminate melanocytic proliferations", "Atypical Spitz tumor"),
    ("Benign", "Cysts", "Milium"),
]
_HIERARCHICAL_SITES = [
    ("Trunk", "Posterior trunk", "Upper back"),
    ("Trunk", "Anterior trunk", "Anterior chest"),
    ("Upper extremity", "Forearm", "Dorsal forearm"),
    ("Lower extremity", "Foot", "Sole of foot"),
    ("Head and neck", "Head", "Face"),
    ("Head and neck",),
]


def _lesion_codes(rng: np.random.Generator, codes, weights, n: int, min_per_class: int) -> np.ndarray:
    counts = np.maximum(np.round(weights * n).astype(int), min_per_class)
    lesion = np.repeat(np.arange(len(codes)), counts)
    rng.shuffle(lesion)
    return lesion


def _pick(rng: np.random.Generator, values, blank: float = 0.0) -> str:
    """One of ``values``, or an empty cell with probability ``blank``."""
    return "" if rng.random() < blank else str(values[int(rng.integers(len(values)))])


def _age(rng: np.random.Generator, blank: float = 0.03):
    return np.nan if rng.random() < blank else float(rng.integers(1, 18) * 5)


def write_isic2019(
    root: str | Path,
    n_lesions: int = 60,
    *,
    size: tuple[int, int] = (600, 450),
    seed: int = 0,
    min_per_class: int = 3,
    unknown: int = 0,
) -> Path:
    """Write a synthetic ISIC 2019 training set under ``root`` and return ``root``.

    ``ISIC_2019_Training_GroundTruth.csv`` (``image,MEL,...,SCC,UNK`` one-hot ``1.0``/``0.0``),
    ``ISIC_2019_Training_Metadata.csv`` (``image,age_approx,anatom_site_general,lesion_id,sex``, some cells
    empty) and ``ISIC_2019_Training_Input/`` (the JPEGs, ``LICENSE.txt``, ``ATTRIBUTION.txt``). Lesions come
    from HAM (``HAM_``), BCN (``BCN_``), MSK (``MSK4_``, some images ``..._downsampled``) or have no lesion id;
    ``unknown`` more images have ``UNK`` set.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    codes = ISIC2019.codes  # the ground truth's column order
    rows = []
    for li, lab in enumerate(_lesion_codes(rng, codes, _ISIC2019_WEIGHTS, n_lesions, min_per_class)):
        source = _pick(rng, ["HAM", "BCN", "BCN", "MSK4", ""])  # "": no lesion id, as for some ISIC 2019 images
        lesion = f"{source}_{li:07d}" if source else ""
        mult = 1 if not lesion else int(rng.choice([1, 2, 3, 4], p=[0.7, 0.18, 0.08, 0.04]))
        age, sex, site = _age(rng), _pick(rng, ["male", "female"], 0.03), _pick(rng, _SITES_2019, 0.08)
        for _ in range(mult):
            rows.append({"code": codes[lab], "lesion_id": lesion, "age_approx": age, "sex": sex, "anatom_site_general": site})
    rows += [{"code": "UNK", "lesion_id": "", "age_approx": _age(rng), "sex": "", "anatom_site_general": ""} for _ in range(unknown)]
    order = rng.permutation(len(rows))
    images = []
    for k, i in enumerate(order):
        msk = rows[i]["lesion_id"].startswith("MSK")
        images.append(f"ISIC_{k:07d}" + ("_downsampled" if msk and rng.random() < 0.5 else ""))
    meta = pd.DataFrame([rows[i] for i in order])
    meta.insert(0, "image", images)
    gt = pd.DataFrame({"image": meta["image"]})
    for c in (*codes, "UNK"):
        gt[c.upper()] = (meta["code"] == c).astype(float)
    root.mkdir(parents=True, exist_ok=True)
    gt.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    meta[["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]].to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(exist_ok=True)
    (folder / "LICENSE.txt").write_text("Synthetic images for tests; not medical data.\n")
    (folder / "ATTRIBUTION.txt").write_text("skinlesion synthetic data\n")
    for image, code in zip(meta["image"], meta["code"]):
        look = code if code in _LOOK else _pick(rng, list(_LOOK))
        _draw(look, rng, size).save(folder / f"{image}.jpg", quality=90)
    return root


def write_isic2020(
    root: str | Path,
    n_patients: int = 30,
    *,
    size: tuple[int, int] = (600, 450),
    seed: int = 0,
    duplicates: int = 3,
    min_melanoma: int = 6,
    table: str = "train.csv",
) -> Path:
    """Write a synthetic ISIC 2020 training set under ``root`` and return ``root``.

    ``table`` (``train.csv``, Kaggle's name, or ``ISIC_2020_Training_GroundTruth.csv``) with
    ``image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target``,
    ``ISIC_2020_Training_Duplicates.csv`` (``image_name_1,image_name_2``: ``duplicates`` pairs, each second image
    a byte copy of the first, some under another patient id) and the JPEGs in ``train/``. Patients have one to
    six images; melanomas (``target`` 1) are drawn with the melanoma look, the rest with the benign ones.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = rng.choice(10**7, size=n_patients * 8 + duplicates, replace=False)
    patients = rng.choice(10**7, size=n_patients, replace=False)
    rows = []
    for p in patients:
        sex, age = _pick(rng, ["male", "female"], 0.02), _age(rng, 0.02)
        for _ in range(int(rng.integers(1, 7))):
            rows.append(
                {"patient_id": f"IP_{p:07d}", "sex": sex, "age_approx": age, "anatom_site_general_challenge": _pick(rng, _SITES_2020, 0.05)}
            )
    mel = np.zeros(len(rows), bool)
    mel[rng.choice(len(rows), size=min(len(rows), max(min_melanoma, round(0.1 * len(rows)))), replace=False)] = True
    for r, m in zip(rows, mel):
        r["diagnosis"] = "melanoma" if m else _pick(rng, _BENIGN_2020)
        r["benign_malignant"] = "malignant" if m else "benign"
        r["target"] = int(m)
    for r, n in zip(rows, names):
        r["image_name"] = f"ISIC_{n:07d}"
    pairs = []
    for k, i in enumerate(rng.choice(len(rows), size=duplicates, replace=False)):
        copy = dict(rows[i], image_name=f"ISIC_{names[len(rows) + k]:07d}")
        if k % 2:  # the real list holds duplicates filed under another patient too
            copy["patient_id"] = rows[(i + 1) % len(rows)]["patient_id"]
        pairs.append((rows[i]["image_name"], copy["image_name"]))
        rows.append(copy)
    t = pd.DataFrame(rows)[
        ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"]
    ]
    root.mkdir(parents=True, exist_ok=True)
    t.to_csv(root / table, index=False)
    pd.DataFrame(pairs, columns=["image_name_1", "image_name_2"]).to_csv(root / "ISIC_2020_Training_Duplicates.csv", index=False)
    folder = root / "train"
    folder.mkdir(exist_ok=True)
    copies = dict((b, a) for a, b in pairs)
    for name, target in zip(t["image_name"], t["target"]):
        if name not in copies:
            look = "mel" if target == 1 else _pick(rng, ["nv", "bkl", "df", "vasc"])
            _draw(look, rng, size).save(folder / f"{name}.jpg", quality=90)
    for copy, original in copies.items():
        (folder / f"{copy}.jpg").write_bytes((folder / f"{original}.jpg").read_bytes())
    return root


def write_isic_cli(
    root: str | Path,
    n_lesions: int = 40,
    *,
    size: tuple[int, int] = (600, 450),
    seed: int = 0,
    min_per_class: int = 2,
    unlabelled: int = 3,
    sites: str = "general",
) -> Path:
    """Write what ``isic image download root`` writes, synthetic, and return ``root``.

    ``metadata.csv`` (``isic_id,attribution,copyright_license`` then the metadata fields in alphabetical
    order, as isic-cli writes them: ``age_approx``, ``anatom_site_general`` (``sites="general"``) or
    ``anatom_site_1..5`` (``sites="hierarchical"``, newer exports), ``concomitant_biopsy``, ``diagnosis_1..5``,
    ``diagnosis_confirm_type``, ``image_type``, ``lesion_id``, ``patient_id``, ``sex``), the images as
    ``root/ISIC_XXXXXXX.jpg``, ``attribution.txt`` and ``licenses/<license>.txt``. The diagnoses are the ISIC
    Archive's hierarchy for the eight ISIC 2019 classes; ``unlabelled`` more images name none of them.
    Some images have a patient id but no lesion id, some neither.
    """
    if sites not in ("general", "hierarchical"):
        raise ValueError(f"unknown sites {sites!r}; use 'general' or 'hierarchical'")
    root = Path(root)
    rng = np.random.default_rng(seed)
    codes = ISIC2019.codes
    lesions = list(_lesion_codes(rng, codes, _ISIC2019_WEIGHTS, n_lesions, min_per_class)) + [None] * unlabelled
    ids = rng.choice(10**7, size=4 * len(lesions), replace=False)
    rows = []
    for li, lab in enumerate(lesions):
        patient = f"IP_{ids[2 * li]:07d}" if rng.random() < 0.9 else ""
        lesion = f"IL_{ids[2 * li + 1]:07d}" if rng.random() < 0.85 else ""
        chain = _HIERARCHY[codes[lab]] if lab is not None else _UNLABELLED
        dx = chain[int(rng.integers(len(chain)))]
        mult = 1 if not lesion else int(rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07]))
        attribution, license_ = _pick(rng, _ATTRIBUTIONS), _pick(rng, _LICENSES)
        sex, age = _pick(rng, ["male", "female"], 0.05), _age(rng, 0.05)
        for _ in range(mult):
            row = {"attribution": attribution, "copyright_license": license_, "age_approx": age, "sex": sex}
            if sites == "general":
                row["anatom_site_general"] = _pick(rng, _SITES_2019, 0.1)
            else:
                levels = _HIERARCHICAL_SITES[int(rng.integers(len(_HIERARCHICAL_SITES)))]
                row.update({f"anatom_site_{k + 1}": levels[k] if k < len(levels) else "" for k in range(5)})
            row["concomitant_biopsy"] = str(dx[0] == "Malignant")
            row.update({f"diagnosis_{k + 1}": dx[k] if k < len(dx) else "" for k in range(5)})
            row["diagnosis_confirm_type"] = "histopathology" if dx[0] == "Malignant" else "single image expert consensus"
            row["image_type"] = "dermoscopic"
            row["lesion_id"], row["patient_id"] = lesion, patient
            row["look"] = codes[lab] if lab is not None else _pick(rng, ["nv", "bkl", "df"])
            rows.append(row)
    rng.shuffle(rows)
    t = pd.DataFrame(rows)
    t.insert(0, "isic_id", [f"ISIC_{k:07d}" for k in sorted(rng.choice(10**7, size=len(t), replace=False))])
    fields = sorted(c for c in t.columns if c not in ("isic_id", "attribution", "copyright_license", "look"))
    root.mkdir(parents=True, exist_ok=True)
    t[["isic_id", "attribution", "copyright_license", *fields]].to_csv(root / "metadata.csv", index=False)
    counts = t["attribution"].value_counts()
    (root / "attribution.txt").write_text("\n\n".join(sorted(counts.index, key=lambda a: (a == "Anonymous", -counts[a], a))))
    (root / "licenses").mkdir(exist_ok=True)
    for license_ in sorted(set(t["copyright_license"])):
        (root / "licenses" / f"{license_}.txt").write_text(f"{license_} (synthetic test data)\n")
    for isic_id, look in zip(t["isic_id"], t["look"]):
        _draw(look, rng, size).save(root / f"{isic_id}.jpg", quality=90)
    return root
