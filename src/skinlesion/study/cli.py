"""``skinlesion study``: create a reader study, invite its readers, report it (see :mod:`skinlesion.study`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Reader studies: readers against the model, and readers with it, on a study database.", no_args_is_help=True)

DB_HELP = "The study database: a SQLite file path (created if missing) or a postgresql://user@host/db URL."


@app.command()
def create(
    data: Path = typer.Argument(..., help="The images with ground truth: a HAM10000 folder, metadata CSV or .npz."),
    model: str = typer.Option("default", "--model", "-m", help="The model whose answers readers are measured against."),
    cases: int = typer.Option(60, "--cases", help="Cases to draw, class-stratified (one image per lesion)."),
    seed: int = typer.Option(1, "--seed", help="Seed of the case draw and of each reader's case order."),
    db: str = typer.Option(..., "--db", help=DB_HELP),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated image ids to use instead of a draw (in this order)."),
    arms: str = typer.Option("solo", "--arms", help="solo, assisted or solo,assisted (readers alternate between the arms)."),
    education: bool = typer.Option(False, "--education", help="Show readers the truth and their running score after each case."),
    train_data: Optional[str] = typer.Option(
        None, "--train-data", help="Where the model's training data is \\[default: as its bundle says]."
    ),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Grad-CAM maps for the assisted arm (slow on a CPU)."),
) -> None:
    """Create a study: prints `study: ID` and `admin key: KEY` (the key is shown only this once)."""
    from .create import create_study
    from .store import Store

    store = Store(db)
    id_list = [i.strip() for i in ids.split(",") if i.strip()] if ids else None
    study_id, admin_key, said = create_study(
        store,
        data,
        model=model,
        cases=cases,
        seed=seed,
        ids=id_list,
        arms=arms,
        education=education,
        train_data=train_data,
        heatmaps=heatmaps,
    )
    typer.echo(f"study: {study_id}")
    typer.echo(f"admin key: {admin_key}")
    typer.echo(f"note: {said}.", err=True)


@app.command()
def invite(
    db: str = typer.Option(..., "--db", help=DB_HELP),
    study: str = typer.Option(..., "--study", help="The study id `study create` printed."),
    readers: int = typer.Option(..., "--readers", help="How many new readers (tokens) to make."),
    arm: Optional[str] = typer.Option(None, "--arm", help="Put every new reader in this arm \\[default: alternate the study's arms]."),
    link: Optional[str] = typer.Option(
        None, "--link", help="The app's address, e.g. http://host:8501: print reading links instead of tokens."
    ),
) -> None:
    """Add readers: prints one reader token per line (or one link, with --link); each is shown only this once."""
    from urllib.parse import urlencode

    from .create import invite as make
    from .store import Store

    for label, a, token in make(Store(db), study, readers, arm):
        typer.echo(f"{link.rstrip('/')}/?{urlencode({'study': study, 'token': token})}" if link else token)
        typer.echo(f"note: {label} ({a} arm)", err=True)


@app.command()
def report(
    db: str = typer.Option(..., "--db", help=DB_HELP),
    study: str = typer.Option(..., "--study", help="The study id."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for answers.csv, report.json and roc.png."),
) -> None:
    """Write answers.csv (one row per locked answer), report.json (metrics with bootstrap 95 % intervals) and roc.png."""
    from .report import write_report
    from .store import Store

    rep = write_report(Store(db), study, out)
    for phase, m in rep["pooled"].items():
        acc = m["accuracy"]
        typer.echo(
            f"{phase}: {m['n_answers']} answers, pooled accuracy {acc:.3f}"
            + (f" ({m['accuracy_ci95'][0]:.3f}-{m['accuracy_ci95'][1]:.3f})" if m["accuracy_ci95"] else "")
        )
    typer.echo(f"model: accuracy {rep['model']['accuracy']:.3f} on {rep['n_cases']} cases")
    typer.echo(f"wrote {Path(out) / 'answers.csv'}, {Path(out) / 'report.json'} and {Path(out) / 'roc.png'}")
