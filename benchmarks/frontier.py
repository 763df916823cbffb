"""Can a rebalanced classifier move the accuracy / balanced-accuracy frontier of the shipped ensemble?

    python benchmarks/frontier.py [--model default] [--data ../shared/data/dermamnist28] [--cache DIR]

For each member of a cross-validated ensemble, its penultimate (pooled, pre-logit) features are
extracted: the plain view for its training folds, the 8 flips/rotations for the fold it never
saw. Its classifier is then retrained on the training folds' features alone, the backbone frozen:

- ``crt``: class-balanced sampling (cRT, Kang et al., ICLR 2020);
- ``la``:  the logit-adjusted loss, cross-entropy on ``logits + tau * log(prior)`` (Menon et al.,
  ICLR 2021; ``tau = 1`` is the balanced softmax);

and predicts its held-out fold (TTA: the log of the mean probability of the 8 views), so every
out-of-fold prediction still comes from a network that never saw the image. Each set of OOF
logits then goes through the shipped post-hoc pipeline, cross-fitted (calibration with prior
correction and the metadata fusion fitted on the other folds), and is scored under both decision
rules: ``most-probable``, and ``balanced`` with its exponent chosen on the other folds. The
shipped heads are the first row; a check asserts that they reproduce the bundle's stored OOF logits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def features(model: str, data: str, cache: Path | None = None) -> list[dict]:
    """Per member: held-out fold features (n, 8, D) and positions, training folds' features (n, 1, D) and positions."""
    import torch

    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.data.loader import ImageSet, make_loader
    from skinlesion.preprocess import tta_views

    net, cfg, aux = load_model(model, with_extra=True)
    ds = load_dataset(data)
    folds = np.asarray(aux["oof.folds"]).astype(int)
    out = []
    for i, m in enumerate(net.members):
        path = cache / f"member{i}.npz" if cache else None
        if path is not None and path.exists():
            out.append(dict(np.load(path)))
            continue
        m = m.float().eval()
        fold = cfg.members[i].fold
        feats = {}
        for part, pos, views in (("held", np.flatnonzero(folds == fold), 8), ("train", np.flatnonzero(folds != fold), 1)):
            loader = make_loader(ImageSet(ds, pos, cfg.prep.eval_transform()), 256, num_workers=0)
            chunks = []
            with torch.inference_mode():
                for x, _, _ in loader:
                    v = torch.cat(tta_views(x)) if views == 8 else x
                    f = m.forward_head(m.forward_features(v), pre_logits=True)
                    chunks.append(f.reshape(views, len(x), -1).permute(1, 0, 2).numpy().astype(np.float32))
            feats[part], feats[part + "_pos"] = np.concatenate(chunks), pos
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **feats)
        out.append(feats)
    return out


def head_logits(net, feats: list[dict], labels: np.ndarray, method: str | None, *, epochs: int = 10, tau: float = 1.0, seed: int = 0):
    """OOF logits from each member's classifier (``method`` None: as shipped; ``crt`` or ``la``: retrained)."""
    import torch

    from skinlesion.preprocess import tta_logits

    k = int(labels.max()) + 1
    prior = np.bincount(labels, minlength=k) / len(labels)
    oof = np.zeros((len(labels), k))
    for i, f in enumerate(feats):
        head = net.members[i].get_classifier()
        w = torch.nn.Parameter(head.weight.detach().float().clone())
        b = torch.nn.Parameter(head.bias.detach().float().clone())
        if method is not None:
            x = torch.from_numpy(f["train"][:, 0]).float()
            y = torch.from_numpy(labels[f["train_pos"]])
            counts = np.bincount(y.numpy(), minlength=k)
            opt = torch.optim.AdamW([w, b], lr=1e-2, weight_decay=1e-4)
            g = torch.Generator().manual_seed(seed + i)
            log_prior = torch.log(torch.from_numpy(prior).float())
            for _ in range(epochs):
                if method == "crt":  # every class equally likely in each batch
                    order = torch.multinomial(torch.from_numpy((1.0 / counts)[y.numpy()]).double(), len(y), replacement=True, generator=g)
                else:
                    order = torch.randperm(len(y), generator=g)
                for s in range(0, len(order), 1024):
                    j = order[s : s + 1024]
                    z = x[j] @ w.T + b
                    if method == "la":
                        z = z + tau * log_prior
                    loss = torch.nn.functional.cross_entropy(z, y[j])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            v = torch.from_numpy(f["held"]).float() @ w.T + b  # (n, 8, k)
        oof[f["held_pos"]] = tta_logits(v.permute(1, 0, 2).numpy())
    return oof


def score(logits, labels, folds, meta) -> dict:
    """Cross-fitted post-hoc pipeline, then both decision rules (the balanced exponent chosen on the other folds)."""
    from skinlesion.cv import crossfit_probs
    from skinlesion.metrics import compute_metrics
    from skinlesion.posthoc import decide, fit_decision

    p = crossfit_probs(logits, labels, folds, meta)
    balanced = np.zeros(len(labels), int)
    alphas = []
    for f in np.unique(folds):
        rest = folds != f
        dec = fit_decision(p[rest], labels[rest])
        alphas.append(dec["rules"]["balanced"]["alpha"])
        balanced[~rest] = decide(p[~rest], dec, "balanced")
    m0, mb = compute_metrics(p, labels), compute_metrics(p, labels, balanced)
    return {
        "most_probable": {k: m0[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "nll")}
        | {"mel_recall": m0["per_class"]["mel"]["recall"]},
        "balanced": {k: mb[k] for k in ("accuracy", "balanced_accuracy")} | {"mel_recall": mb["per_class"]["mel"]["recall"]},
        "alpha_per_fold": alphas,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--cache", default=None, help="keep the extracted features here (reruns skip the extraction)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from skinlesion.bundle import load_model, read_tensors, resolve_model_path

    t0 = time.time()
    path = resolve_model_path(args.model)
    aux = read_tensors(path)
    if "oof.logits" not in aux:
        raise SystemExit(f"{path.name} holds no out-of-fold predictions; pass a cross-validated ensemble.")
    net, cfg = load_model(path)
    labels, folds = np.asarray(aux["oof.labels"]).astype(int), np.asarray(aux["oof.folds"]).astype(int)
    meta = np.asarray(aux["oof.meta"], np.float64) if cfg.metadata else None
    feats = features(args.model, args.data, Path(args.cache) if args.cache else None)
    shipped = head_logits(net, feats, labels, None)
    stored = np.asarray(aux["oof.logits"], np.float64)
    assert np.abs(shipped - stored).max() < 1e-3, "the extracted features do not reproduce the stored OOF logits"
    rows = [("shipped heads", {}, shipped)]
    for method, kw in (
        ("crt", {"epochs": 10}),
        ("crt", {"epochs": 30}),
        ("la", {"epochs": 10}),
        ("la", {"epochs": 30}),
        ("la", {"epochs": 30, "tau": 2.0}),
    ):
        rows.append((f"{method} {kw}", kw, head_logits(net, feats, labels, method, **kw)))
    res = {"model": str(path), "images": int(len(labels)), "rows": []}
    print(f"{len(labels)} out-of-fold predictions; cross-fitted post-hoc pipeline; {time.time() - t0:.0f} s")
    print(
        "| classifier | most-probable accuracy | balanced accuracy | macro AUC | NLL | balanced rule: accuracy | balanced accuracy | melanoma recall |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, kw, logits in rows:
        s = score(logits, labels, folds, meta)
        res["rows"].append({"classifier": name, **s})
        a, b = s["most_probable"], s["balanced"]
        print(
            f"| {name} | {a['accuracy']:.4f} | {a['balanced_accuracy']:.4f} | {a['auc_macro']:.4f} | {a['nll']:.4f} | "
            f"{b['accuracy']:.4f} | {b['balanced_accuracy']:.4f} | {b['mel_recall']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
