"""The training objectives for the tail (skinlesion.losses) and experiment tracking (train --logger)."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.losses import effective_number_weights, objective
from skinlesion.train import class_weights

K = 3
COUNTS = (900, 250, 30)  # a long tail: the last class is rare


def _long_tailed(seed: int, counts=COUNTS):
    """Three overlapping Gaussian classes in 2-D with a long-tailed prior (and a balanced test set)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [1.6, 0.0], [0.8, 1.4]])
    x = np.vstack([rng.normal(centres[c], 0.9, (n, 2)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    xt = np.vstack([rng.normal(centres[c], 0.9, (400, 2)) for c in range(K)])
    yt = np.repeat(np.arange(K), 400)
    return x, y, xt, yt


def _train_linear(cfg: dict, epochs: int = 30, seed: int = 0):
    """A linear classifier trained with exactly the objective LesionModule uses; returns the rare class's test recall."""
    import torch

    x, y, xt, yt = _long_tailed(1)
    counts = np.bincount(y, minlength=K)
    cfg = {"label_smoothing": 0.0, "epochs": epochs, **cfg}
    obj = objective(cfg, class_weights(y, cfg.get("balance", "none"), K), counts)
    torch.manual_seed(seed)
    net = torch.nn.Linear(2, K)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    X, Y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(64):
            xb, tb = obj.mix(X[idx], Y[idx])
            loss = obj(net(xb), tb, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(torch.tensor(xt, dtype=torch.float32)).argmax(1).numpy()  # the plain logits, as the model predicts
    return float(np.mean(pred[yt == 2] == 2)), float(np.mean(pred == yt))


@pytest.mark.parametrize(
    "cfg",
    [
        {"loss": "logit-adjusted"},
        {"loss": "balanced-softmax"},
        {"loss": "logit-adjusted", "loss_tau": 2.0},
        {"drw_epochs": 10},
        {"loss": "balanced-softmax", "mixup": 0.4},
    ],
    ids=["logit-adjusted", "balanced-softmax", "la-tau2", "drw", "mixup+bsm"],
)
def test_each_tail_loss_raises_the_rare_class_recall_over_plain_cross_entropy(cfg):
    plain_recall, plain_acc = _train_linear({"loss": "cross-entropy"})
    recall, acc = _train_linear(cfg)
    assert plain_recall < 0.6  # the tail is actually hard for plain cross-entropy here
    assert recall > plain_recall + 0.15, (cfg, recall, plain_recall)
    assert acc > 1 / K  # still a classifier, not a constant


def test_balanced_softmax_is_the_logit_adjusted_loss_with_tau_one_and_plain_ce_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(32, K)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, K, 32))
    counts = np.array(COUNTS)
    w = np.ones(K)
    la = objective({"loss": "logit-adjusted", "loss_tau": 1.0, "label_smoothing": 0.05, "epochs": 5}, w, counts)
    bsm = objective({"loss": "balanced-softmax", "label_smoothing": 0.05, "epochs": 5}, w, counts)
    assert float(la(logits, y, 0)) == pytest.approx(float(bsm(logits, y, 0)), abs=1e-7)
    # Ren et al.'s form: softmax with each class's exp(logit) scaled by its count
    p = torch.softmax(logits + torch.log(torch.tensor(counts, dtype=torch.float32)), -1)
    ren = -(torch.log(p[torch.arange(32), y])).mean()
    plain_bsm = objective({"loss": "balanced-softmax", "label_smoothing": 0.0, "epochs": 5}, w, counts)
    assert float(plain_bsm(logits, y, 0)) == pytest.approx(float(ren), abs=1e-6)
    ce = objective({"loss": "cross-entropy", "label_smoothing": 0.05, "epochs": 5}, w, counts)
    assert float(ce(logits, y, 0)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.05)), abs=1e-7)


def test_drw_switches_to_class_balanced_weights_for_the_last_epochs_only():
    counts = np.array(COUNTS)
    obj = objective({"loss": "cross-entropy", "drw_epochs": 3, "epochs": 10, "label_smoothing": 0.0}, np.ones(K), counts)
    assert [obj.drw_active(e) for e in range(10)] == [False] * 7 + [True] * 3
    assert np.allclose(obj.weights(0).numpy(), 1.0)
    late = obj.weights(9).numpy()
    assert np.allclose(late, effective_number_weights(counts)) and late[2] > late[1] > late[0]
    assert (late * counts).sum() == pytest.approx(counts.sum())  # mean weight per training image stays 1


def test_early_stopping_waits_for_the_deferred_re_weighting():
    """A flat validation curve stops a plain run after its patience, but a DRW run not before its re-weighted epochs."""
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.trainer.states import TrainerFn

    from skinlesion.train import MONITOR, EarlyStoppingFrom

    def stopped_at(start: int, epochs: int = 10, patience: int = 2):
        cb = EarlyStoppingFrom(monitor=MONITOR, mode="max", patience=patience, start=start)
        strategy = SimpleNamespace(reduce_boolean_decision=lambda d, all=False: d)
        t = SimpleNamespace(
            state=SimpleNamespace(fn=TrainerFn.FITTING), sanity_checking=False, fast_dev_run=False, strategy=strategy, should_stop=False
        )
        for epoch in range(epochs):
            t.current_epoch, t.callback_metrics = epoch, {MONITOR: torch.tensor(0.5)}  # never improves
            cb.on_validation_end(t, None)
            if t.should_stop:
                return epoch
        return None

    assert stopped_at(0) == 2  # the plain run: best at epoch 0, two epochs of patience
    assert stopped_at(7) == 9  # --epochs 10 --drw-epochs 3: watched from epoch 7, so epochs 7-9 all run
    assert stopped_at(7, patience=4) is None


def test_mixup_targets_are_convex_mixtures_of_smoothed_labels_and_odd_batches_work():
    import torch

    obj = objective({"loss": "cross-entropy", "mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1, "epochs": 2}, np.ones(K), COUNTS)
    x = torch.rand(9, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    xm, t = obj.mix(x.clone(), y)
    assert xm.shape == x.shape and t.shape == (9, K)
    assert torch.allclose(t.sum(1), torch.ones(9)) and (t > 0).all()  # smoothed: no class at exactly 0
    assert torch.equal(xm[-1], x[-1]) and t[-1].argmax() == 2  # the odd one out is left unmixed
    assert not torch.equal(xm[:-1], x[:-1])
    loss = obj(torch.randn(9, K, requires_grad=True), t, 0)
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.mark.slow
def test_train_logger_tensorboard_writes_each_epochs_val_balanced_accuracy(tmp_path, synth_kaggle, run_cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from skinlesion.data import load_dataset, make_split

    split = tmp_path / "split.csv"
    make_split(load_dataset(synth_kaggle).meta, fractions=(0.6, 0.2, 0.2), seed=0).manifest.to_csv(split, index=False)
    out = tmp_path / "run"
    tiny = ["--backbone", "resnet18", "--input-size", "32", "--batch-size", "16", "--no-progress", "--num-workers", "0"]
    code, text, err = run_cli(
        "train", str(synth_kaggle), "--split", str(split), "--out", str(out), "--epochs", "2", *tiny, "--logger", "tensorboard",
        "--loss", "balanced-softmax", "--balance", "none", "--mixup", "0.2",
    )  # fmt: skip
    assert code == 0, text + err
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list(out.iterdir())
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    series = acc.Scalars("val_balanced_accuracy")
    assert len(series) == 2 and all(0 <= s.value <= 1 for s in series)
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [round(s.value, 5) for s in series] == [round(float(r["val_balanced_accuracy"]), 5) for r in rows]
    hparams = (out / "tensorboard" / "hparams.yaml").read_text()
    assert "balanced-softmax" in hparams and "mixup: 0.2" in hparams  # the resolved config, as hyperparameters


@pytest.mark.slow
def test_train_logger_mlflow_records_the_run_in_a_local_store(tmp_path, synth_kaggle, run_cli):
    import mlflow

    from skinlesion.data import load_dataset, make_split

    split = tmp_path / "split.csv"
    make_split(load_dataset(synth_kaggle).meta, fractions=(0.6, 0.2, 0.2), seed=0).manifest.to_csv(split, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = ["--backbone", "resnet18", "--input-size", "32", "--batch-size", "16", "--no-progress", "--num-workers", "0"]
    code, text, err = run_cli(
        "train", str(synth_kaggle), "--split", str(split), "--out", str(tmp_path / "run"), "--epochs", "2", *tiny,
        "--logger", "mlflow", "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 0, text + err
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("skinlesion")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_balanced_accuracy")
    assert len(history) == 2
    assert run.data.params.get("cfg/backbone") == "resnet18" or any("resnet18" in v for v in run.data.params.values())


@pytest.mark.parametrize(
    "args, says",
    [
        (["--drw-epochs", "2", "--epochs", "5"], "pass it with --loss cross-entropy --balance none"),
        (["--loss-tau", "2"], "pass --loss logit-adjusted with it"),
        (["--loss", "balanced-softmax"], "pass --balance none with it"),
        (["--logger", "wandb"], "Unknown --logger 'wandb'"),
        (["--tracking-uri", "sqlite:///x.db"], "pass --logger mlflow with it"),
        (["--mixup", "-1"], "--mixup -1.0 must be an alpha"),
        (["--drw-epochs", "5", "--epochs", "5", "--balance", "none"], "fewer than --epochs 5"),
    ],
)
def test_bad_tail_and_logger_options_are_refused_in_one_sentence(args, says, run_cli, tmp_path, synth_kaggle):
    code, out, err = run_cli("train", str(synth_kaggle), "--split", str(tmp_path / "s.csv"), "--out", str(tmp_path / "r"), *args)
    text = out + err
    assert code == 2 and says in text, text
    assert "Traceback" not in text


def test_a_missing_tracking_package_is_one_sentence_and_auto_falls_back_to_csv(monkeypatch, tmp_path):
    import importlib.util
    import re

    from skinlesion.errors import SkinLesionError
    from skinlesion.recipe import TrainConfig
    from skinlesion.train import make_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("mlflow", "tensorboard", "tensorboardX") else real(name, *a)
    )
    for kind, extra in (("mlflow", "skinlesion[mlflow]"), ("tensorboard", "skinlesion[tensorboard]")):
        with pytest.raises(SkinLesionError, match=rf"--logger {kind} needs the {kind} package; install it with .*{re.escape(extra)}"):
            make_logger(TrainConfig(data="", split="", out=str(tmp_path), logger=kind), tmp_path)
    auto = make_logger(TrainConfig(data="", split="", out=str(tmp_path), logger="auto"), tmp_path)
    assert type(auto).__name__ == "CSVLogger" and make_logger(TrainConfig(data="", split="", out="", logger="none"), tmp_path) is False
