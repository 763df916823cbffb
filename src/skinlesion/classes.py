"""Diagnoses and label sets: what a model's classes mean.

A :class:`Diagnosis` is one entry of the registry (:data:`REGISTRY`): its code, name, a plain
description, a neutral description and name (the same without reassurance, used when the triage
tier is not routine), whether it is malignant or pre-malignant, and the names other datasets
use for it (``aliases``: ISIC 2019's columns, ISIC 2020's ``diagnosis`` values, the ISIC
Archive's hierarchical diagnoses). A :class:`LabelSet` is an ordered choice of registry codes:
the classes of one model, carried in its bundle (``classes``), so metrics, calibration, the
tier's malignant classes, the card, the CSV columns and the app follow the model, not a constant.

Label sets (:data:`LABEL_SETS`): ``ham10000`` (the seven HAM10000 diagnoses in the DermaMNIST
order), ``isic2019`` (ISIC 2019's eight, in its ground-truth column order) and ``melanoma``
(melanoma vs any other lesion). ``CODES``, ``DIAGNOSES`` and ``MALIGNANT_MASK`` are HAM10000's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    description: str
    malignant: bool  # malignant or pre-malignant
    neutral: str = ""  # the description without reassurance ("harmless"): shown when the tier is not routine
    neutral_name: str = ""  # the name without reassurance ("benign ..."), likewise
    aliases: tuple[str, ...] = ()  # names other datasets use for it (compared case-insensitively)

    @property
    def plain(self) -> str:
        """The description that never reassures (the neutral one where the plain one does)."""
        return self.neutral or self.description

    @property
    def plain_name(self) -> str:
        """The name that never reassures."""
        return self.neutral_name or self.name


REGISTRY: dict[str, Diagnosis] = {
    d.code: d
    for d in (
        Diagnosis(
            "akiec",
            "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
            "A rough, scaly patch caused by sun damage. It is pre-cancerous and can turn "
            "into squamous cell carcinoma, so it is usually treated.",
            True,
            aliases=("akiec", "actinic keratosis / intraepithelial carcinoma", "bowen's disease", "bowen disease"),
        ),
        Diagnosis(
            "bcc",
            "Basal cell carcinoma",
            "The most common skin cancer. It grows slowly and rarely spreads, but it damages the surrounding skin if left untreated.",
            True,
            aliases=("bcc", "basal cell carcinoma", "basal cell carcinoma, nos"),
        ),
        Diagnosis(
            "bkl",
            "Benign keratosis-like lesion",
            "Harmless growths such as seborrhoeic keratoses, solar lentigines and lichen-planus-like keratoses. They can look like melanoma.",
            False,
            "Growths such as seborrhoeic keratoses, solar lentigines and lichen-planus-like keratoses. They can look like melanoma.",
            "Keratosis-like lesion",
            aliases=(
                "bkl",
                "benign keratosis",
                "benign keratosis-like lesion",
                "pigmented benign keratosis",
                "seborrheic keratosis",
                "seborrhoeic keratosis",
                "solar lentigo",
                "lentigo nos",
                "lentigo simplex",
                "lichenoid keratosis",
                "lichen planus like keratosis",
            ),
        ),
        Diagnosis(
            "df",
            "Dermatofibroma",
            "A common, harmless firm bump in the skin, often on the legs.",
            False,
            "A firm bump in the skin, often on the legs.",
            aliases=("df", "dermatofibroma"),
        ),
        Diagnosis(
            "mel",
            "Melanoma",
            "A cancer of the pigment cells. It can spread to other organs and is the most "
            "dangerous skin cancer; found early it is usually curable.",
            True,
            aliases=(
                "mel",
                "melanoma",
                "melanoma invasive",
                "melanoma in situ",
                "melanoma, nos",
                "melanoma metastasis",
                "malignant melanocytic proliferations (melanoma)",  # the ISIC Archive's diagnosis_2 for any melanoma
            ),
        ),
        Diagnosis(
            "nv",
            "Melanocytic nevus",
            "A common mole: a harmless cluster of pigment cells.",
            False,
            "A mole: a cluster of pigment cells.",
            aliases=("nv", "nevus", "naevus", "melanocytic nevus", "nevus, nos", "blue nevus", "spitz nevus", "congenital nevus"),
        ),
        Diagnosis(
            "vasc",
            "Vascular lesion",
            "Harmless blood-vessel growths such as cherry angiomas, angiokeratomas and pyogenic granulomas.",
            False,
            "Blood-vessel growths such as cherry angiomas, angiokeratomas and pyogenic granulomas.",
            aliases=(
                "vasc",
                "vascular lesion",
                "hemangioma",
                "haemangioma",
                "angioma",
                "cherry angioma",
                "angiokeratoma",
                "pyogenic granuloma",
                "hemorrhage",  # HAM10000's vasc includes haemorrhage (Tschandl et al. 2018); the Archive's "Hemorrhage"
                "benign soft tissue proliferations - vascular",  # the ISIC Archive's diagnosis_2 above hemangioma etc.
            ),
        ),
        Diagnosis(
            "ak",
            "Actinic keratosis",
            "A rough, scaly patch caused by sun damage. It is pre-cancerous and can turn into squamous cell carcinoma.",
            True,
            aliases=("ak", "actinic keratosis", "solar or actinic keratosis", "solar keratosis"),
        ),
        Diagnosis(
            "scc",
            "Squamous cell carcinoma",
            "A skin cancer of the keratinocytes, often on sun-damaged skin. It can spread if left untreated.",
            True,
            aliases=(
                "scc",
                "squamous cell carcinoma",
                "squamous cell carcinoma in situ",
                "squamous cell carcinoma, invasive",
                "squamous cell carcinoma, nos",
                "keratoacanthoma",
            ),
        ),
        Diagnosis(
            "other",
            "Not melanoma",
            "Any lesion other than a melanoma.",
            False,
            aliases=("benign",),  # the ISIC Archive's diagnosis_1 "Benign": not a melanoma, whatever else it is
        ),
    )
}


def _unknown(code, known) -> Exception:
    from .errors import SkinLesionError

    return SkinLesionError(f"Unknown diagnosis code {code!r}; the known codes are {', '.join(known)}.")


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of diagnoses: one model's classes."""

    name: str
    codes: tuple[str, ...]

    def __post_init__(self):
        missing = [c for c in self.codes if c not in REGISTRY]
        if missing:
            raise _unknown(missing[0], list(REGISTRY))
        if len(set(self.codes)) != len(self.codes) or len(self.codes) < 2:
            raise ValueError(f"a label set needs at least two distinct codes, not {self.codes}")

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def diagnoses(self) -> tuple[Diagnosis, ...]:
        return tuple(REGISTRY[c] for c in self.codes)

    @property
    def malignant_mask(self) -> tuple[bool, ...]:
        return tuple(d.malignant for d in self.diagnoses)

    @property
    def malignant(self) -> tuple[str, ...]:
        return tuple(d.code for d in self.diagnoses if d.malignant)

    def get(self, code: str) -> Diagnosis:
        """The diagnosis of a code of this set (case and spaces ignored)."""
        key = str(code).strip().lower()
        if key not in self.codes:
            raise _unknown(code, self.codes)
        return REGISTRY[key]

    def index(self, code: str) -> int:
        return self.codes.index(self.get(code).code)

    def code_for(self, name: str) -> str | None:
        """This set's code for a diagnosis as a dataset names it ("melanoma in situ", "MEL", "nevus"), or None.

        A name of a registry diagnosis that this set lacks maps to its ``other`` class where it has one.
        """
        key = str(name).strip().lower()
        for d in REGISTRY.values():
            if key == d.code or key in d.aliases:
                if d.code in self.codes:
                    return d.code
                return "other" if "other" in self.codes and d.code != "other" else None
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.codes)}


HAM10000 = LabelSet("ham10000", ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"))
ISIC2019 = LabelSet("isic2019", ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc"))  # its ground-truth column order
MELANOMA = LabelSet("melanoma", ("mel", "other"))
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (HAM10000, ISIC2019, MELANOMA)}


def label_set(name_or_codes) -> LabelSet:
    """A known label set by name (``ham10000``, ``isic2019``, ``melanoma``), or the set of these codes."""
    if isinstance(name_or_codes, str):
        key = name_or_codes.strip().lower()
        if key not in LABEL_SETS:
            from .errors import SkinLesionError

            raise SkinLesionError(f"Unknown label set {name_or_codes!r}; use {', '.join(LABEL_SETS)}.")
        return LABEL_SETS[key]
    codes = tuple(name_or_codes)
    return next((s for s in LABEL_SETS.values() if s.codes == codes), None) or LabelSet("custom", codes)


CODES: tuple[str, ...] = HAM10000.codes
DIAGNOSES: tuple[Diagnosis, ...] = HAM10000.diagnoses
NUM_CLASSES = len(CODES)
MALIGNANT: tuple[str, ...] = HAM10000.malignant
MALIGNANT_MASK: tuple[bool, ...] = HAM10000.malignant_mask


def get(code: str) -> Diagnosis:
    """The diagnosis for a code such as ``"mel"`` (case and spaces ignored)."""
    key = str(code).strip().lower()
    if key not in REGISTRY:
        raise _unknown(code, list(REGISTRY))
    return REGISTRY[key]


def index(code: str) -> int:
    return HAM10000.index(code)


# ---- mappings between label sets -----------------------------------------------------------------

# what one dataset's diagnosis means in another label set where the codes differ (HAM10000's akiec holds
# actinic keratoses and Bowen's disease, an intraepithelial squamous cell carcinoma)
KNOWN_MAPPINGS = {("isic2019", "ham10000"): {"ak": "akiec", "scc": "akiec"}}


def default_mapping(source: LabelSet, target: LabelSet) -> dict[str, str | None]:
    """Source code -> target code (None: no counterpart): shared codes map to themselves, the known
    relations of :data:`KNOWN_MAPPINGS` apply, and a target with an ``other`` class takes the rest."""
    known = KNOWN_MAPPINGS.get((source.name, target.name), {})
    out: dict[str, str | None] = {}
    for code in source.codes:
        if code in target.codes:
            out[code] = code
        elif code in known:
            out[code] = known[code]
        else:
            out[code] = "other" if "other" in target.codes else None
    return out


def read_mapping(path, source: LabelSet, target: LabelSet) -> dict[str, str | None]:
    """A mapping file (CSV ``from,to``; an empty ``to`` drops that class) on top of :func:`default_mapping`.

    Codes are checked against both label sets; a wrong one is refused in one sentence.
    """
    from pathlib import Path

    from .errors import SkinLesionError

    path = Path(path)
    if not path.is_file():
        raise SkinLesionError(f"The mapping file {path} does not exist; pass a CSV with columns from,to (e.g. ak,akiec).")
    from .data.csvfile import read_csv

    table = read_csv(path, "a mapping file with the columns from,to (e.g. ak,akiec)", dtype=str, keep_default_na=False)
    if not {"from", "to"} <= set(table.columns):
        raise SkinLesionError(f"{path.name} needs the columns from,to (found: {', '.join(table.columns) or 'none'}).")
    froms = table["from"].str.strip().str.lower()
    twice = froms[froms.duplicated(keep=False)]
    if len(twice):
        first = twice.iloc[0]
        rows = [str(i + 2) for i in twice.index[twice == first]]
        raise SkinLesionError(
            f"{path.name} maps {first!r} more than once (rows {', '.join(rows)}), so the mapping is ambiguous; keep one row per class."
        )
    out = default_mapping(source, target)
    for i, row in table.iterrows():
        a, b = row["from"].strip().lower(), row["to"].strip().lower()
        if a not in source.codes:
            raise SkinLesionError(
                f"{path.name}, row {i + 2}: {a!r} is not a class of the data's {source.name} label set ({', '.join(source.codes)})."
            )
        if b and b not in target.codes:
            raise SkinLesionError(
                f"{path.name}, row {i + 2}: {b!r} is not a class of the model's {target.name} label set ({', '.join(target.codes)})."
            )
        out[a] = b or None
    return out
