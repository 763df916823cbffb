"""``skinlesion predict``: images (and their patient data) in, one row each out; locally or through ``--server``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import SkinLesionError
from .common import _progress, _say, _warn, write_csv


def read_meta_csv(path: Path) -> dict:
    """image id -> {age, sex, localization} from a CSV with an image (or image_id) column."""
    if not path.is_file():
        raise SkinLesionError(f"The patient data file {path} does not exist; pass a CSV with columns image,age,sex,localization.")
    from ..data.csvfile import read_csv

    table = read_csv(path, "a patient data CSV with columns image,age,sex,localization", dtype=str)
    key = next((c for c in ("image", "image_id") if c in table.columns), None)
    if key is None:
        raise SkinLesionError(f"The patient data file {path.name} needs an image or image_id column (and any of age, sex, localization).")
    from ..posthoc import META_FIELDS, encode_metadata

    for i, row in table.iterrows():
        try:
            encode_metadata([row.to_dict()])
        except ValueError as exc:
            raise SkinLesionError(f"{path.name}, row {i + 2}: {exc}; leave a field empty when it is unknown.") from None
    return {Path(str(r[key])).stem: {f: r.get(f) for f in META_FIELDS if f in table.columns} for _, r in table.iterrows()}


def predict(
    model: str = typer.Argument(
        ..., help="Run directory, model file (.safetensors or .onnx), 'default', or hf://OWNER/NAME (a Hugging Face Hub model)."
    ),
    images: Optional[List[str]] = typer.Argument(None, help="Image files, folders or globs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the rows to this CSV."),
    meta: Optional[Path] = typer.Option(
        None, "--meta", help="CSV of patient data: image (or image_id), age, sex, localization; any may be empty."
    ),
    fmt: str = typer.Option(
        "skinlesion",
        "--format",
        help="skinlesion (every field), isic2018 (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC; a HAM10000 model) or "
        "isic2019 (image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK; an isic2019 model).",
    ),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Average the 8 flips/rotations (default: the model's own setting)."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when a current export of the model exists), torch or onnx."),
    rule: Optional[str] = typer.Option(
        None, "--rule", help="Decision rule naming the top class: most-probable or balanced (default: the model's own, in its card)."
    ),
    server: Optional[str] = typer.Option(
        None, "--server", help="URL of a running `skinlesion serve`: it analyses the files (give only FILES, no MODEL)."
    ),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="With --server: a file holding the service's API key."),
) -> None:
    """Predict images: one row each (top class, probabilities, prediction set, tier, refer, warnings, errors).

    Exits 1 when no file could be analysed (and, with --format isic2018, when any could not).
    """
    import pandas as pd

    from ..predict import Predictor, expand_inputs, predict_files, row_columns

    if fmt not in ("skinlesion", "isic2018", "isic2019"):
        raise SkinLesionError(f"Unknown --format {fmt!r}; use skinlesion, isic2018 or isic2019.")
    if server:  # the service's model answers: every argument is a file (MODEL is not given)
        _check_remote(model, tta, backend)
        images = [model, *(images or [])]
    elif api_key_file:
        raise SkinLesionError("--api-key-file goes with --server URL; a local run needs no key.")
    paths = expand_inputs(images or [])
    if not paths:
        raise SkinLesionError("No files to predict; pass image files, folders or globs.")
    meta_rows = read_meta_csv(meta) if meta else None
    if server:
        from ..serve.client import predict_remote

        with _progress("predicting") as progress:
            rows, codes = predict_remote(
                server,
                paths,
                key_file=api_key_file,
                meta=meta_rows,
                progress=lambda n: progress(n, len(paths)),
                warn=_warn,
                rule=rule,
            )
    else:
        predictor = Predictor(model, backend=backend, tta=tta, rule=rule)
        if fmt != "skinlesion":
            from ..isic import check_format

            check_format(fmt, predictor.labels)  # before any image is analysed
        if meta_rows is not None and not predictor.uses_metadata:
            _warn("this model does not use patient data; --meta is ignored.")
        with _progress("predicting") as progress:
            rows = predict_files(predictor, paths, meta=meta_rows, progress=lambda n: progress(n, len(paths)))
        codes = predictor.labels.codes
    table = pd.DataFrame(rows).reindex(columns=row_columns(codes))
    failed = table["error"].fillna("").astype(bool)
    if fmt != "skinlesion":
        from ..classes import label_set
        from ..isic import submission

        good = table[~failed]
        sub = submission(good["image"], good[list(codes)].to_numpy(float), fmt, label_set(tuple(codes)))
        if out:
            write_csv(sub, out)
    elif out:
        write_csv(table, out)
    shown = table[["image", "top_class", "probability", "tier", "prediction_set", "quality", "warnings", "error"]].copy()
    from ..verdict import tier_shown

    shown["tier"] = [tier_shown(r) for r in table[["tier", "verdict"]].to_dict("records")]  # "not analysed": out of distribution
    shown["image"] = [Path(str(n)).name for n in shown["image"]]
    with pd.option_context("display.max_columns", None, "display.width", 220, "display.max_colwidth", 70):
        _say(shown.astype(object).fillna("").to_string(index=False))
    if out:
        _say(f"wrote {out}")
    if failed.all():
        _warn(f"none of the {len(table)} file(s) could be analysed; see the error column.")
        raise typer.Exit(1)
    if failed.any():
        _warn(f"{int(failed.sum())} of {len(table)} file(s) could not be read; see the error column.")
        if fmt != "skinlesion":
            _warn("the ISIC file holds only the images that could be analysed; the scorer needs every test image.")
            raise typer.Exit(1)


def _check_remote(model: str, tta, backend: str) -> None:
    """With --server no local model runs: options that would choose one are refused, never ignored (--rule travels)."""
    if tta is not None or backend != "auto":
        raise SkinLesionError(
            "--tta and --backend choose how a local model runs; leave them out with --server "
            "(the service's model answers, with its own settings; --rule is sent to it)."
        )
    if model == "default" and not Path(model).exists():
        raise SkinLesionError("With --server the service's model answers; give only the files (leave out MODEL).")
