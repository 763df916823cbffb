"""Out-of-distribution score: is this upload a dermoscopic image like the training data?

Mahalanobis distance (Lee et al., 2018) of the backbone's pooled features to the
nearest class mean, with one shared covariance (Ledoit-Wolf shrinkage) fitted on the
training images. The threshold is a high percentile of the val images' scores, so
about ``1 - percentile`` of real val images are flagged and selfies, cats and phone
photos of skin land far outside. The fitted tensors travel inside the model's
safetensors file (keys ``ood.*``); the JSON config holds the method and threshold.
"""

from __future__ import annotations

import numpy as np

PERCENTILE = 97.5
PREFIX = "ood."


def features(net, x):
    """Pooled pre-logit features of a timm model for a batch tensor."""
    return net.forward_head(net.forward_features(x), pre_logits=True)


def dataset_features(net, prep, ds, positions, batch_size: int = 256) -> np.ndarray:
    import torch

    from .data.loader import ImageSet, make_loader

    net = net.eval()
    loader = make_loader(ImageSet(ds, positions, prep.eval_transform()), batch_size, num_workers=0)
    out = []
    with torch.inference_mode():
        for x, _, _ in loader:
            out.append(features(net, x).float().numpy())
    return np.concatenate(out)


def mahalanobis(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of (f - mu_c)^T P (f - mu_c)."""
    feats = np.asarray(feats, np.float64)
    d = []
    for mu in np.asarray(means, np.float64):
        z = feats - mu
        d.append(np.einsum("ij,jk,ik->i", z, precision, z))
    return np.min(np.stack(d, 1), axis=1)


def fit_ood(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, percentile: float = PERCENTILE):
    """Fit class means and a shared precision; return (tensors for safetensors, JSON config)."""
    from sklearn.covariance import LedoitWolf

    classes = sorted(set(np.asarray(train_labels).tolist()))
    means = np.stack([train_feats[train_labels == c].mean(0) for c in classes])
    centred = train_feats - means[np.searchsorted(classes, train_labels)]
    precision = LedoitWolf().fit(centred).precision_
    val_scores = mahalanobis(val_feats, means, precision)
    threshold = float(np.percentile(val_scores, percentile))
    tensors = {PREFIX + "means": means.astype(np.float32), PREFIX + "precision": precision.astype(np.float32)}
    config = {"method": "mahalanobis", "threshold": threshold, "percentile": percentile,
              "val_flagged": float(np.mean(val_scores > threshold)), "dim": int(train_feats.shape[1])}
    return tensors, config


def fit_for_model(net, prep, ds, train_positions, val_positions, max_train: int = 8000, seed: int = 0):
    rng = np.random.default_rng(seed)
    tr = np.asarray(train_positions)
    if len(tr) > max_train:
        tr = rng.choice(tr, max_train, replace=False)
    tf = dataset_features(net, prep, ds, tr)
    vf = dataset_features(net, prep, ds, np.asarray(val_positions))
    return fit_ood(tf, ds.labels[tr], vf)
