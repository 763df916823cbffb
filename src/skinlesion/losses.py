"""The training objective, for a long-tailed label set: what :class:`skinlesion.train.LesionModule` minimises.

One function, :func:`objective`, builds it from the recipe (:class:`skinlesion.recipe.TrainConfig`):

- ``cross-entropy`` with per-class weights from ``--balance`` (sqrt, weights or none), label smoothing;
- ``logit-adjusted`` (Menon et al., ICLR 2021): cross-entropy on ``logits + tau * log(prior)``; the
  network predicts with its plain logits, which then estimate the *balanced* posterior;
- ``balanced-softmax`` (Ren et al., NeurIPS 2020): ``softmax(logits + log n_j)``, which for one label
  per image is exactly the logit-adjusted loss with ``tau = 1`` (the class counts' constant cancels);
  named apart because the literature names it apart, computed by the same code (a test checks they agree);
- deferred re-weighting (DRW, Cao et al., NeurIPS 2019): the plain loss for the first epochs, then
  class-balanced weights (the "effective number" of Cui et al., CVPR 2019, beta 0.9999) for the last
  ``drw_epochs``, so the representation is learnt unweighted and the classifier re-balanced;
- mixup / CutMix (timm's :class:`timm.data.Mixup`, its soft targets carrying the label smoothing).

Every variant is cross-entropy against (soft) targets on (adjusted) logits, so they combine.
"""

from __future__ import annotations

import numpy as np

LOSSES = ("cross-entropy", "logit-adjusted", "balanced-softmax")


def effective_number_weights(counts, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_j)`` (Cui et al. 2019), scaled to mean 1 per training image."""
    n = np.maximum(np.asarray(counts, float), 1.0)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / (w * n).sum() * n.sum()


class Objective:
    """The loss of one training step: ``objective(logits, labels, epoch)`` (and ``mix(x, y)`` before the forward pass).

    ``class_w``: the --balance weights (used from the first epoch); ``prior``: the training classes' shares;
    ``tau``: the logit adjustment (0 for plain cross-entropy); ``drw_weights`` from epoch ``drw_start`` on.
    """

    def __init__(self, *, class_w, prior, tau: float, smoothing: float, drw_start: int | None, drw_weights, mixup=None):
        import torch

        self.class_w = torch.as_tensor(class_w, dtype=torch.float32)
        self.log_prior = torch.log(torch.as_tensor(prior, dtype=torch.float32))
        self.tau = float(tau)
        self.smoothing = float(smoothing)
        self.drw_start = drw_start
        self.drw_weights = None if drw_weights is None else torch.as_tensor(drw_weights, dtype=torch.float32)
        self.mixup = mixup
        self._device = {}  # (name, device) -> the tensor there, moved once (no host copy per step)

    def _on(self, name: str, device):
        key = (name, str(device))
        if key not in self._device:
            self._device[key] = getattr(self, name).to(device)
        return self._device[key]

    def drw_active(self, epoch: int) -> bool:
        return self.drw_start is not None and epoch >= self.drw_start

    def weights(self, epoch: int, device="cpu"):
        """The per-class weights in force at ``epoch`` (DRW switches to the class-balanced ones late)."""
        return self._on("drw_weights" if self.drw_active(epoch) else "class_w", device)

    def mix(self, x, y):
        """(inputs, targets): the batch mixed by mixup/CutMix with soft targets, or unchanged with the class indices."""
        import torch

        if self.mixup is None:
            return x, y
        if len(x) % 2:  # timm mixes a batch with its reverse and asks for an even size; the odd one out stays as it is
            head_x, head_y = self.mixup(x[:-1], y[:-1])
            tail = self._soft(y[-1:], x.device)
            return torch.cat([head_x, x[-1:]]), torch.cat([head_y, tail])
        return self.mixup(x, y)

    def _soft(self, y, device):
        import torch

        k = len(self.class_w)
        off = self.smoothing / k
        t = torch.full((len(y), k), off, device=device)
        return t.scatter_(1, y.view(-1, 1), 1.0 - self.smoothing + off)

    def __call__(self, logits, target, epoch: int):
        import torch
        import torch.nn.functional as F

        w = self.weights(epoch, logits.device)
        if self.tau:
            logits = logits + self.tau * self._on("log_prior", logits.device)
        if target.ndim == 1:  # class indices: PyTorch's own weighted, smoothed cross-entropy (weighted mean)
            return F.cross_entropy(logits, target, weight=w, label_smoothing=self.smoothing)
        # soft targets (mixup/CutMix already smoothed them): each image weighted by its targets' class weights
        per_image = -(target * F.log_softmax(logits, -1)).sum(-1)
        sample_w = target @ w
        return (per_image * sample_w).sum() / torch.clamp(sample_w.sum(), min=1e-12)


def objective(cfg: dict, class_w, counts) -> Objective:
    """The :class:`Objective` of a recipe (``cfg``: the resolved TrainConfig as a dict; ``counts``: training class counts)."""
    counts = np.maximum(np.asarray(counts, float), 1.0)
    prior = counts / counts.sum()
    loss = cfg.get("loss", "cross-entropy")
    tau = 0.0 if loss == "cross-entropy" else (1.0 if loss == "balanced-softmax" else float(cfg.get("loss_tau", 1.0)))
    drw = int(cfg.get("drw_epochs", 0) or 0)
    mixup = None
    if cfg.get("mixup", 0) or cfg.get("cutmix", 0):
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=float(cfg.get("mixup", 0.0)),
            cutmix_alpha=float(cfg.get("cutmix", 0.0)),
            prob=float(cfg.get("mix_prob", 1.0)),
            switch_prob=0.5,
            mode="batch",
            label_smoothing=float(cfg.get("label_smoothing", 0.0)),
            num_classes=len(counts),
        )
    return Objective(
        class_w=class_w,
        prior=prior,
        tau=tau,
        smoothing=float(cfg.get("label_smoothing", 0.0)),
        drw_start=(int(cfg["epochs"]) - drw) if drw else None,
        drw_weights=effective_number_weights(counts) if drw else None,
        mixup=mixup,
    )
