"""The Hugging Face Hub folder: export -> load round trip, its model card metadata, hf:// refusals."""

import json

import numpy as np
import pytest

from skinlesion.errors import SkinLesionError

SAMPLE = "src/skinlesion/samples/ISIC_0024310.jpg"


@pytest.fixture(scope="module")
def hub_folder(default_model, tmp_path_factory):
    from skinlesion.hub_export import export_hub

    return export_hub("default", tmp_path_factory.mktemp("hub") / "skinlesion-ham10000")


def test_hub_folder_layout_and_card_metadata(hub_folder):
    from huggingface_hub import ModelCard

    assert sorted(p.name for p in hub_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((hub_folder / "config.json").read_text())
    assert cfg["num_classes"] == len(cfg["label_names"]) == 7
    assert cfg["pretrained_cfg"]["input_size"][1] == cfg["skinlesion"]["preprocess"]["input_size"]
    assert cfg["skinlesion"]["decision"] and cfg["skinlesion"]["metrics"]
    card = ModelCard.load(hub_folder / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "cc-by-nc-sa-4.0" and d["pipeline_tag"] == "image-classification"
    assert d["datasets"] and "accuracy" in d["metrics"] and "dermoscopy" in d["tags"]
    assert card.data.eval_results and "# Model card" in card.text


def test_hub_round_trip_same_probabilities(hub_folder):
    from skinlesion import Predictor

    a = Predictor("default", backend="torch").predict(SAMPLE)
    b = Predictor(hub_folder, backend="torch").predict(SAMPLE)
    pa = np.array([p for _, p in sorted(a.probabilities.items())])
    pb = np.array([p for _, p in sorted(b.probabilities.items())])
    assert np.abs(pa - pb).max() <= 1e-6
    assert b.diagnosis == a.diagnosis


def test_export_refuses_a_non_empty_folder(default_model, tmp_path):
    from skinlesion.hub_export import export_hub

    (tmp_path / "x").write_text("x")
    with pytest.raises(SkinLesionError, match="not an empty folder"):
        export_hub("default", tmp_path)


def test_hf_offline_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from skinlesion.bundle import resolve_model_path

    with pytest.raises(SkinLesionError) as e:
        resolve_model_path("hf://someone/skinlesion-model")
    msg = str(e.value)
    assert "offline" in msg and msg.count(". ") == 0 and "\n" not in msg


def test_hf_bad_name_refused():
    from skinlesion.bundle import resolve_model_path

    with pytest.raises(SkinLesionError, match="hf://OWNER/NAME"):
        resolve_model_path("hf://just-a-name")


def test_cli_export_hub_needs_out(run_cli):
    code, out, err = run_cli("export", "default", "--format", "hub")
    assert code == 2 and "--out DIR" in err and "Traceback" not in err
