"""The sample image the app offers as "Try a sample": a real dermoscopic image with its ground truth.

The package bundles one (``skinlesion/samples/ISIC_0024310.jpg``: a HAM10000 melanoma confirmed by
histopathology, CC BY-NC-SA 4.0, credit in ``samples/README.md``). An operator may name another
(``skinlesion app --sample IMAGE``); a JSON file beside it with the bundled one's keys (diagnosis,
confirmed_by, credit, license, patient) gives its ground truth and credit too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED = "ISIC_0024310.jpg"


@dataclass(frozen=True)
class Sample:
    path: Path
    credit: str = ""
    license: str = ""
    diagnosis: str | None = None  # the ground-truth code, when known
    confirmed_by: str | None = None
    patient: dict = field(default_factory=dict)  # age, sex, localization, when known
    seen_in_training_by: str | None = None  # the model (e.g. "default") whose training data holds this image
    seen_in_training_note: str = ""

    def truth(self) -> str | None:
        """The ground truth in words, or None when the sample has none."""
        if not self.diagnosis:
            return None
        from .classes import get

        d = get(self.diagnosis)
        how = f", confirmed by {self.confirmed_by}" if self.confirmed_by else ""
        return f"Ground truth: {d.name} ({d.code}){how}."


def bundled_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("skinlesion") / "samples" / BUNDLED))


def load_sample(path: str | Path | None = None, credit: str | None = None) -> Sample:
    """The sample at ``path`` (default: the bundled one) with what its JSON beside it says; ``credit`` overrides its credit."""
    p = Path(path) if path else bundled_path()
    info = {}
    side = p.with_suffix(".json")
    if side.is_file():
        try:
            info = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
    return Sample(
        path=p,
        credit=credit if credit else str(info.get("credit", "")),
        license=str(info.get("license", "")),
        diagnosis=info.get("diagnosis"),
        confirmed_by=info.get("confirmed_by"),
        patient=dict(info.get("patient") or {}),
        seen_in_training_by=info.get("seen_in_training_by"),
        seen_in_training_note=str(info.get("seen_in_training_note", "")),
    )
