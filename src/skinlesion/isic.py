"""The ISIC challenge files: the submission CSVs ``predict --format isic2018|isic2019`` writes and the
ISIC 2018 ground-truth CSV ``evaluate --labels`` reads.

ISIC 2018 Task 3 has the columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (the challenge's order), for
a HAM10000 model; ISIC 2019 Task 1 ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, for an ``isic2019``
model (its ``UNK``, "none of the others", is 0: the model names one of its eight). ``image`` is the
image id without folder or extension. In a submission each row holds the probabilities; in ground
truth, a one-hot row. The official scorer (``isic-challenge-scoring``) reads both;
``tests/test_parity.py`` checks our metrics against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .classes import CODES, HAM10000, ISIC2019
from .errors import SkinLesionError

COLUMNS = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
COLUMNS_2019 = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
FORMATS = {"isic2018": (HAM10000, COLUMNS), "isic2019": (ISIC2019, COLUMNS_2019)}


def check_format(fmt: str, classes):
    """(label set, columns) of a submission format, refusing a model of another label set in one sentence."""
    wanted, columns = FORMATS[fmt]
    if tuple(classes.codes) != wanted.codes:
        other = next((f for f, (ls, _) in FORMATS.items() if ls.codes == tuple(classes.codes)), "skinlesion")
        raise SkinLesionError(
            f"--format {fmt} needs a model of the {wanted.name} label set; this one predicts {', '.join(classes.codes)} "
            f"(use --format {other})."
        )
    return wanted, columns


def submission(images, probabilities, fmt: str = "isic2018", classes=HAM10000):
    """The submission table: one row per image (id without folder or extension), probabilities in the challenge's order.

    ``classes``: the model's label set, which must be the one the format is for.
    """
    import pandas as pd

    wanted, columns = check_format(fmt, classes)
    p = np.asarray(probabilities, np.float64)
    table = pd.DataFrame({"image": [Path(str(n)).stem for n in images]})
    for c in columns[1:]:
        table[c] = p[:, wanted.index(c.lower())] if c.lower() in wanted.codes else 0.0
    return table


def read_truth(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(image ids, class indices in our order) from an ISIC 2018 ground-truth CSV (one-hot rows)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SkinLesionError(f"The ground-truth file {path} does not exist; pass an ISIC 2018 CSV ({','.join(COLUMNS)}).")
    try:
        table = pd.read_csv(path, dtype={"image": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise SkinLesionError(f"{path} is not a readable CSV file; pass an ISIC 2018 ground-truth CSV ({','.join(COLUMNS)}).") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SkinLesionError(
            f"{path.name} lacks the column(s) {', '.join(missing)}; an ISIC 2018 ground-truth CSV has {','.join(COLUMNS)}."
        )
    values = table[COLUMNS[1:]].apply(pd.to_numeric, errors="coerce").to_numpy()
    bad = ~(np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SkinLesionError(
            f"Row {row + 2} of {path.name} ({table['image'].iat[row]}) is not one-hot; each ground-truth row has a single 1.0 among the seven classes."
        )
    if table["image"].duplicated().any():
        raise SkinLesionError(f"{path.name} lists {table['image'][table['image'].duplicated()].iat[0]} more than once.")
    labels = np.array([CODES.index(COLUMNS[1 + j].lower()) for j in values.argmax(axis=1)])
    return table["image"].tolist(), labels
