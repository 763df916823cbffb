"""benchmarks/retrain.py's ``--blend``: two ensembles' OOF logits combined exactly as one bundle of all their members."""

from __future__ import annotations

import numpy as np

from .conftest import benchmark


def test_blend_is_what_one_ensemble_of_all_the_members_returns():
    import torch

    from skinlesion.bundle import ensemble

    rng = np.random.default_rng(0)
    outs = [rng.normal(size=(5, 7)) * 3 for _ in range(3)]

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = torch.tensor(out)

        def forward(self, x):
            return self.out

    both = ensemble([Fixed(o) for o in outs])(torch.zeros(1)).double().numpy()
    first_two = benchmark("retrain").blend(outs[0], outs[1])
    got = benchmark("retrain").blend(outs[0], outs[1], outs[2])
    np.testing.assert_allclose(got, both, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first_two, both, atol=1e-3)  # a third member changes the answer: not a pass-through
