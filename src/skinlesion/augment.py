"""Training augmentation of a whole batch on the training device: the batched twin of
:meth:`skinlesion.preprocess.Preprocess.train_transform`, with the same strengths
(:meth:`~skinlesion.preprocess.Preprocess.augment_spec`, stored with the model).

A training batch leaves the loader as uint8 source pixels (``Preprocess.to_source``, N x H x W x 3,
unnormalised). For each image this module draws, on the host,

- a random resized crop with the spec's area and aspect ranges and torchvision's rejection sampling
  (ten tries, then the central crop), resized to ``input_size`` at the model's interpolation and,
  where it downsamples, antialiased the way Pillow and ``torch.nn.functional.interpolate(...,
  antialias=True)`` do it (a separable filter widened by the scale factor), rounded to uint8 levels;
- a horizontal and a vertical flip and a quarter-turn rotation (folded into the resampling and one
  transpose);
- brightness, contrast, saturation and hue factors, applied in a random order per image with
  torchvision's ColorJitter semantics for float tensors (clamped to [0, 1] after each operation; the
  images are grouped by their order, so each group is a few whole-tensor operations);
- the round dermatoscope field (:func:`skinlesion.preprocess.round_field`), then the normalisation;

and applies them on the device, the GPU's or, in CI, the CPU's. The parameters are a pure function of
(seed, epoch, image position): a counter-based hash (splitmix64) of the three numbers and a counter,
vectorised over the batch, so no generator is seeded per image, a resumed run repeats an uninterrupted
one, and neither the batch size, the batch's order, the worker count nor the device changes what an
image gets.

Why not a library: kornia's augmentations draw one colour-jitter order per batch and do not antialias
their crops (its "slice" crop mode also loops over the batch reading each box back to the host);
torchvision's v2 transforms apply one parameter set to a whole batch; NVIDIA DALI runs its own
pipeline and generator (no (seed, epoch, image) draws, no CPU path for CI). See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .preprocess import Preprocess

OPS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's operations; an image's order indexes these
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "box": 0.5}  # Pillow's filters (torch's antialias=True uses the same)
NO_FIELD = 9.0  # a field radius that masks nothing (the corners lie at radius 1)

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def uniforms(seed: int, epoch: int, positions, n: int) -> np.ndarray:
    """``(len(positions), n)`` numbers uniform in [0, 1): entry (b, k) depends on (seed, epoch, positions[b], k) alone."""
    head = _mix(np.array([int(seed) & (2**64 - 1)], _U64) + _GOLDEN)
    head = _mix(head ^ (np.array([int(epoch) & (2**64 - 1)], _U64) * _GOLDEN + _GOLDEN))
    pos = np.asarray(positions, np.int64).astype(_U64)
    keys = _mix(head ^ ((pos + _U64(1)) * _GOLDEN))
    bits = _mix(keys[:, None] + np.arange(1, n + 1, dtype=_U64)[None, :] * _GOLDEN)
    return (bits >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class Draws:
    """One batch's augmentation parameters, one entry per image (numpy arrays)."""

    top: np.ndarray  # the crop box in source pixels (int)
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    hflip: np.ndarray  # bool
    vflip: np.ndarray  # bool
    rot: np.ndarray  # counter-clockwise quarter turns, 0..3 (applied after the flips and the colour)
    order: np.ndarray  # (N, 4): the colour operations' order, indices into OPS
    brightness: np.ndarray  # factors; 1 (0 for hue) where an operation is off
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray
    radius: np.ndarray  # the round field's radius, NO_FIELD where an image gets none

    def __len__(self) -> int:
        return len(self.top)


def draw(spec: dict, seed: int, epoch: int, positions, height: int, width: int) -> Draws:
    """Each image's parameters for source images of ``height`` x ``width``, as ``Preprocess.train_transform`` draws them."""
    u = uniforms(seed, epoch, positions, 35)
    n = len(u)
    area = float(height * width)
    lo, hi = spec["scale"]
    target = area * (lo + (hi - lo) * u[:, 0:10])
    lr0, lr1 = math.log(spec["ratio"][0]), math.log(spec["ratio"][1])
    aspect = np.exp(lr0 + (lr1 - lr0) * u[:, 10:20])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # rint: half to even, as Python's round
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(1)
    rows = np.arange(n)
    cw, ch = w[rows, first], h[rows, first]
    top = np.minimum(np.floor(u[:, 20] * (height - ch + 1)).astype(np.int64), height - ch)
    left = np.minimum(np.floor(u[:, 21] * (width - cw + 1)).astype(np.int64), width - cw)
    none = ~ok.any(1)
    if none.any():  # torchvision's fallback: the central crop, its aspect clamped to the range
        r0, r1 = spec["ratio"]
        in_ratio = width / height
        if in_ratio < r0:
            fw, fh = width, int(round(width / r0))
        elif in_ratio > r1:
            fw, fh = int(round(height * r1)), height
        else:
            fw, fh = width, height
        cw[none], ch[none] = fw, fh
        top[none], left[none] = (height - fh) // 2, (width - fw) // 2

    def factor(rng, col, off):
        return np.full(n, off) if rng is None else rng[0] + (rng[1] - rng[0]) * u[:, col]

    field = u[:, 33] < spec["vignette"]
    r_lo, r_hi = spec["field_radius"]
    return Draws(
        top=top,
        left=left,
        height=ch,
        width=cw,
        hflip=u[:, 22] < spec["flip"],
        vflip=u[:, 23] < spec["flip"],
        rot=np.minimum(np.floor(u[:, 32] * spec["rotations"]).astype(np.int64), spec["rotations"] - 1),
        order=np.argsort(u[:, 24:28], axis=1, kind="stable"),  # a uniformly random permutation per image
        brightness=factor(spec["brightness"], 28, 1.0),
        contrast=factor(spec["contrast"], 29, 1.0),
        saturation=factor(spec["saturation"], 30, 1.0),
        hue=factor(spec["hue"], 31, 0.0),
        radius=np.where(field, r_lo + (r_hi - r_lo) * u[:, 34], NO_FIELD),
    )


# rotation by k quarter turns after flips (h, v) == an optional transpose after flips (h', v'):
# k = 1: T V^v H^(1-h); k = 2: V^(1-v) H^(1-h); k = 3: T V^(1-v) H^h (tests/test_augment.py checks all 16)
def fold(hflip: np.ndarray, vflip: np.ndarray, rot: np.ndarray):
    """(h', v', transpose) with rot90^k(vflip^v(hflip^h(Y))) == transpose^t(vflip^v'(hflip^h'(Y)))."""
    k = np.asarray(rot) % 4
    h, v = np.asarray(hflip, bool), np.asarray(vflip, bool)
    return h ^ ((k == 1) | (k == 2)), v ^ (k >= 2), (k % 2) == 1


# columns of the parameter tensor that travels to the device
_TOP, _LEFT, _H, _W, _HF, _VF, _T, _B, _C, _S, _HUE, _R = range(12)


class BatchAugment:
    """Augment uint8 batches (N, H, W, 3) on their device with per-sample parameters from (seed, epoch, image).

    ``aug(pixels, epoch, positions)`` draws and applies in one call. A training loop splits it:
    :meth:`plan` on the host (before the copy to the device: no device reads back), :meth:`apply` on the
    device. The result is float32 (N, 3, S, S), normalised, in the batch's order (channels-last on a GPU).

    ``resample``: "auto" resizes each crop with torch's uint8 antialiased kernel on a CPU (fast there)
    and with two batched matrix products on a GPU (a few launches for the whole batch); "loop" and
    "matmul" force one. They give the same uint8 levels but for about 1 % of the pixels, one or two
    levels apart (rounding; tests/test_augment.py).
    """

    def __init__(self, prep: Preprocess, seed: int = 0, *, resample: str = "auto"):
        from .errors import SkinLesionError

        self.prep, self.seed, self.spec = prep, int(seed), prep.augment_spec()
        if self.spec["interpolation"] not in _SUPPORT:
            raise SkinLesionError(
                f"Device augmentation resamples with {', '.join(_SUPPORT)}, not {self.spec['interpolation']}; use --augment-on workers."
            )
        if resample not in ("auto", "loop", "matmul"):
            raise ValueError(f"resample must be auto, loop or matmul, not {resample!r}")
        self.resample = resample
        self.size = int(prep.input_size)
        self._consts: dict = {}

    # ---- on the host ----
    def draw(self, epoch: int, positions, height: int, width: int) -> Draws:
        return draw(self.spec, self.seed, epoch, positions, height, width)

    def plan(self, draws: Draws, *, pin: bool = False) -> dict:
        """What :meth:`apply` needs, as host tensors and Python numbers: the images sorted by colour order
        (``order``: sorted slot -> batch index), their parameters, and the groups of one colour order."""
        import torch

        code = draws.order @ np.array([64, 16, 4, 1])
        order = np.argsort(code, kind="stable")
        code = code[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ends = np.r_[starts[1:], len(code)]
        on = [self.spec[name] is not None for name in OPS]
        groups = tuple((int(a), int(b), tuple(int(op) for op in draws.order[order[a]] if on[op])) for a, b in zip(starts, ends) if b > a)
        hf, vf, tr = fold(draws.hflip, draws.vflip, draws.rot)
        cols = [draws.top, draws.left, draws.height, draws.width, hf, vf, tr]
        cols += [draws.brightness, draws.contrast, draws.saturation, draws.hue, draws.radius]
        params = torch.from_numpy(np.stack([np.asarray(c, np.float64)[order] for c in cols], 1).astype(np.float32))
        order_t = torch.from_numpy(order.astype(np.int64))
        if pin:
            params, order_t = params.pin_memory(), order_t.pin_memory()
        return {"order": order_t, "params": params, "groups": groups, "field": bool((draws.radius < NO_FIELD).any())}

    # ---- on the device ----
    def apply(self, pixels, plan: dict, rows=None):
        """The augmented batch: ``pixels`` uint8 (N, H, W, 3) on the device, or with ``rows`` (int64 (N,)) a
        device-resident store of which the batch is ``pixels[rows]``."""
        import torch

        device = pixels.device
        cpu = device.type == "cpu"
        loop = self.resample == "loop" or (self.resample == "auto" and cpu and self.spec["interpolation"] != "box")
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            out = torch.empty(
                (len(plan["order"]), 3, self.size, self.size),
                dtype=torch.float32,
                device=device,
                memory_format=torch.contiguous_format if cpu else torch.channels_last,
            )
            if loop:
                self._apply_each(pixels, rows, plan, out)
            elif cpu:  # the GPU way on a CPU (box filters, tests): its operations one core each, as the loop's
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    self._apply_batched(pixels, rows, plan, out)
                finally:
                    torch.set_num_threads(threads)
            else:
                self._apply_batched(pixels, rows, plan, out)
        return out

    def _apply_batched(self, pixels, rows, plan, out) -> None:
        """The GPU way: the whole batch in a few hundred launches, nothing read back to the host. The colour runs per
        group of one order, except the hue (two thirds of the operations): each image's operations before its hue,
        then the hue of the whole batch at once, then each image's operations after it; each image's order holds."""
        device = pixels.device
        order = plan["order"].to(device, non_blocking=True)
        p = plan["params"].to(device, non_blocking=True)
        src = pixels.index_select(0, order if rows is None else rows.index_select(0, order))  # sorted by colour order
        x = self._resize_matmul(src, p)
        work = _Planes(reuse=False)
        f = p[:, _B : _B + 4].reshape(-1, 4, 1, 1, 1)
        one_minus = 1 - f
        hue = 3 in {op for _, _, ops in plan["groups"] for op in ops}
        for phase in ("before", "after") if hue else ("all",):
            for a, b, ops in plan["groups"]:
                ops = ops if phase == "all" else (ops[: ops.index(3)] if phase == "before" else ops[ops.index(3) + 1 :])
                if ops:
                    self._colour(x[a:b], f[a:b].unbind(1), ops, work, one_minus[a:b].unbind(1))
            if phase == "before":
                _shift_hue(x, f[:, 3], work)
        self._finish(x, p[:, _R].view(-1, 1, 1), plan["field"], work)
        out.index_copy_(0, order, x)

    def _apply_each(self, pixels, rows, plan, out) -> None:
        """The CPU way: blocks of images of one colour order, about a megabyte each (one 224 px image, dozens of small
        ones), on work planes reused from block to block, so that the dozens of operations run in the cache and touch
        no fresh memory (a page fault per 4 KiB); a lone image is worked on in its place in ``out``, with Python numbers
        for its factors. Each crop goes through torch's uint8 antialiased resize. The blocks are shared among as many
        threads as torch may use (:func:`_pool`), each running its operations on one core: on planes this small,
        splitting every operation across cores costs more than it brings (ten times more on a busy machine)."""
        import torch

        per = max(1, (1 << 18) // (3 * self.size * self.size))
        tasks = [(c, min(b, c + per), ops) for a, b, ops in plan["groups"] for c in range(a, b, per)]
        ctx = {
            "view": pixels.permute(0, 3, 1, 2),  # N, 3, H, W over the channels-last memory: crops are views
            "geometry": plan["params"][:, :_B].to(torch.int64).tolist(),
            "order": plan["order"].tolist(),
            "source": plan["order"].tolist() if rows is None else rows[plan["order"]].tolist(),
        }
        threads = torch.get_num_threads()
        chunks = [tasks[k::threads] for k in range(min(threads, len(tasks)))]
        list(_pool(threads).map(lambda chunk: self._blocks(chunk, plan, ctx, out), chunks))

    def _blocks(self, tasks, plan, ctx, out) -> None:
        import torch
        import torch.nn.functional as F

        s, mode, params = self.size, self.spec["interpolation"], plan["params"]
        view, geometry, order, source = ctx["view"], ctx["geometry"], ctx["order"], ctx["source"]
        work = _Planes(reuse=True)
        block = None
        for c, d, ops in tasks:
            if d - c == 1:
                v = out[order[c] : order[c] + 1]
            else:
                if block is None or len(block) < d - c:
                    block = torch.empty((d - c, 3, s, s), device=out.device)
                v = block[: d - c]
            for j in range(c, d):
                top, left, h, w, hf, vf, tr = geometry[j]
                i = source[j]
                y = F.interpolate(view[i : i + 1, :, top : top + h, left : left + w], size=(s, s), mode=mode, antialias=True)
                if hf:
                    y = y.flip(-1)
                if vf:
                    y = y.flip(-2)
                v[j - c : j - c + 1].copy_(y.transpose(-1, -2) if tr else y)
            if d - c == 1:
                f = params[c, _B:].tolist()
                self._colour(v, f[:4], ops, work)
                self._finish(v, f[4], plan["field"], work)
            else:
                self._colour(v, [params[c:d, _B + k].view(-1, 1, 1, 1) for k in range(4)], ops, work)
                self._finish(v, params[c:d, _R].view(-1, 1, 1), plan["field"], work)
                out.index_copy_(0, plan["order"][c:d], v)

    def __call__(self, pixels, epoch: int, positions, rows=None):
        """Draw and apply in one call (tests, benchmarks): ``positions`` are the images' dataset positions."""
        h, w = pixels.shape[1:3]
        return self.apply(pixels, self.plan(self.draw(epoch, np.asarray(positions), h, w)), rows=rows)

    def _constants(self, device):
        import torch

        key = str(device)
        if key not in self._consts:
            s = self.size
            c = (torch.arange(s, dtype=torch.float64) + 0.5 - s / 2) / (s / 2)
            radius = (torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2) / math.sqrt(2)).float()  # as round_field
            std = torch.tensor(self.prep.std, dtype=torch.float64).view(1, 3, 1, 1)
            mean = (torch.tensor(self.prep.mean, dtype=torch.float64).view(1, 3, 1, 1) / std).float()  # over std
            inv_std = (1.0 / (255 * std)).float()  # levels to normalised units
            gray = torch.tensor(_GRAY, dtype=torch.float32)
            # made once per device: a tensor built from Python numbers on a GPU is a copy that waits for the GPU
            self._consts[key] = tuple(t.to(device) for t in (mean, inv_std, radius, gray))
        return self._consts[key]

    def _resize_matmul(self, src, p):
        """All crops at once, as two batched matrix products with each image's resampling matrices (flips folded
        in): columns first, rounded and clamped to uint8 levels, then rows, as Pillow and torch's uint8 kernel do."""
        import torch

        n, h, w, _ = src.shape
        s = self.size
        my = self._matrix(p[:, _TOP], p[:, _H], h, p[:, _VF])
        mx = self._matrix(p[:, _LEFT], p[:, _W], w, p[:, _HF])
        x = src.to(torch.float32).permute(0, 2, 1, 3).reshape(n, w, h * 3)
        x = torch.bmm(mx, x).add_(0.5).floor_().clamp_(0, 255)  # (n, s, h*3): each row resampled to s columns, rounded half up
        x = x.view(n, s, h, 3).permute(0, 2, 1, 3).reshape(n, h, s * 3)
        x = torch.bmm(my, x).add_(0.5).floor_().clamp_(0, 255)  # (n, s, s*3): then the rows
        x = x.view(n, s, s, 3).permute(0, 3, 1, 2)  # (n, 3, s, s)
        tr = p[:, _T].bool().view(n, 1, 1, 1)
        return torch.where(tr, x.transpose(-1, -2), x)

    def _matrix(self, start, length, size: int, flip):
        """(n, S, size) resampling weights: output i of crop [start, start + length) of a ``size`` axis, as Pillow's
        resample (crop-local centres, support widened by the scale when downsampling, normalised taps)."""
        import torch

        s, kind, dev = self.size, self.spec["interpolation"], start.device
        support0 = _SUPPORT[kind]
        scale = (length / s).double()
        fscale = scale.clamp(min=1.0)
        support = support0 * fscale
        k = 2 * math.ceil(support0 * max(size / s, 1.0)) + 1  # enough taps for the largest possible crop
        centre = (torch.arange(s, device=dev, dtype=torch.float64) + 0.5)[None] * scale[:, None]  # (n, S)
        lo = torch.floor(centre - support[:, None] + 0.5).clamp(min=0)
        hi = torch.minimum(torch.floor(centre + support[:, None] + 0.5), length.double()[:, None])
        taps = lo[..., None] + torch.arange(k, device=dev, dtype=torch.float64)  # (n, S, k), crop-local
        t = (taps - centre[..., None] + 0.5) / fscale[:, None, None]
        if kind == "bicubic":  # a = -0.5, Pillow's (and torch's antialiased) bicubic
            a, t = -0.5, t.abs()
            wt = torch.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, torch.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))
        elif kind == "bilinear":
            wt = (1 - t.abs()).clamp(min=0)
        else:  # box
            wt = ((t > -0.5) & (t <= 0.5)).double()
        wt = wt * (taps < hi[..., None])
        wt = wt / wt.sum(-1, keepdim=True).clamp(min=1e-12)
        cols = (taps + start.double()[:, None, None]).clamp(max=size - 1).long()
        m = torch.zeros((len(start), s, size), dtype=torch.float64, device=dev).scatter_add_(2, cols, wt)
        return torch.where(flip.bool().view(-1, 1, 1), m.flip(1), m).float()

    def _colour(self, v, factors, ops, work: "_Planes", complements=None) -> None:
        """ColorJitter in place on v (n, 3, S, S) in levels (0-255, torchvision's [0, 1] times 255: the same arithmetic
        and one pass less), images that share one order of operations; ``factors``:
        brightness, contrast, saturation, hue, each a number or an (n, 1, 1, 1) tensor (``complements``: 1 - each)."""
        gray = self._constants(v.device)[3]
        for op in ops:
            f = factors[op]
            g = 1 - f if complements is None else complements[op]
            if op == 0:  # brightness: blend with black
                v.mul_(f).clamp_(0, 255)
            elif op == 1:  # contrast: blend with the mean grey level
                m = (v.mean((-2, -1)) @ gray).view(-1, 1, 1, 1)
                v.mul_(f).add_(m * g).clamp_(0, 255)
            elif op == 2:  # saturation: blend with the grey image
                grey = _gray(v, work.get(0, v[:, 0]))
                v.mul_(f).add_(grey.unsqueeze(1).mul_(g)).clamp_(0, 255)
            else:
                _shift_hue(v, f, work)

    def _finish(self, v, radius, field: bool, work: "_Planes") -> None:
        """The round field (``radius``: a number or (n, 1, 1)) and the normalisation, in place on v (n, 3, S, S) in levels."""
        import torch

        mean, inv_std, r, _ = self._constants(v.device)
        if field:  # black where r > radius (round_field), in arithmetic: boolean tensors are slow on CPUs
            keep = torch.sub(r.expand_as(v[:, 0]), radius, out=work.get(12, v[:, 0]))
            v.mul_(keep.sign_().clamp_(min=0).neg_().add_(1).unsqueeze(1))
        v.mul_(inv_std).sub_(mean)  # (v / 255 - mean) / std


_POOLS: dict = {}


def _pool(threads: int):
    """A pool of ``threads`` threads for the CPU way, made once per process, whose threads each run torch's operations
    on one core (torch's thread count is per thread with OpenMP; the caller's stays as it was)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import torch

    key = (os.getpid(), threads)  # a forked DataLoader worker gets a pool of its own
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,), thread_name_prefix="augment")
    return _POOLS[key]


class _Planes:
    """Work planes for the colour operations: on a CPU the same ones for every image (fresh memory costs a page
    fault per 4 KiB there), on a GPU fresh ones (its caching allocator makes them free)."""

    def __init__(self, reuse: bool):
        self.reuse, self.planes = reuse, {}

    def get(self, i: int, like):
        import torch

        key = (i, tuple(like.shape))
        if not self.reuse or key not in self.planes:
            self.planes[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        return self.planes[key]


def _gray(v, out):
    """torchvision's rgb_to_grayscale of v (n, 3, H, W) into out (n, H, W)."""
    import torch

    r, g, b = v.unbind(1)
    return torch.mul(r, _GRAY[0], out=out).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])


def _shift_hue(v, f, work: _Planes) -> None:
    """Rotate the HSV hue of v (n, 3, H, W) (any scale: levels here) by f turns (a number or (n, 1, 1, 1)), in place: torchvision's
    adjust_hue in 31 whole-plane operations on work planes, without boolean masks, ``where`` or number-minus-tensor
    (each several times slower on CPUs)."""
    import torch

    r, g, b = v.unbind(1)
    one = [work.get(i, r) for i in range(7)]  # (n, H, W) planes
    three = work.get(20, v)  # an (n, 3, H, W) stack of planes
    hi = torch.maximum(torch.maximum(r, g, out=one[0]), b, out=one[0])
    lo = torch.minimum(torch.minimum(r, g, out=one[1]), b, out=one[1])
    delta = torch.sub(hi, lo, out=one[2])
    d = torch.sub(hi.unsqueeze(1), v, out=three)  # max - r, max - g, max - b
    dr, dg, db = d.unbind(1)
    not_r, not_g = torch.sign(dr, out=one[3]), torch.sign(dg, out=one[4])  # 0 exactly where it is the maximum
    # delta x the hue in sextants: r max -> g - b; g max -> 2 delta + b - r; b max -> 4 delta + r - g (ties: r, then g)
    t = torch.sub(db, dg, out=one[5])
    h6 = torch.sub(t, torch.mul(t, not_r, out=one[6]), out=one[6])
    is_b = torch.mul(not_r, not_g, out=one[4])
    is_g = torch.sub(not_r, is_b, out=one[3])
    h6.addcmul_(is_g, torch.sub(dr, db, out=one[5]).add_(delta, alpha=2))
    h6.addcmul_(is_b, torch.sub(dg, dr, out=one[5]).add_(delta, alpha=4))
    h6.div_(torch.add(delta, 1e-12, out=one[5])).add_(6 * f if isinstance(f, float) else 6 * f[:, 0])
    # HSV -> RGB, the three channels at once: channel = V - V S clamp(min(k, 4 - k), 0, 1)
    #   = min + delta clamp(|k - 2| - 1, 0, 1) with k = (h6 + 5, 3, 1) mod 6 for r, g, b
    k = torch.add(h6.unsqueeze(1), _sextants(v), out=three)
    k.sub_(torch.mul(k, 1 / 6, out=v).floor_().mul_(6)).sub_(2).abs_().sub_(1).clamp_(0, 1)
    torch.addcmul(lo.unsqueeze(1), delta.unsqueeze(1), k, out=v)


_SEXTANTS: dict = {}


def _sextants(like):
    """The (5, 3, 1) offsets of r, g, b, made once per device (from Python numbers, a GPU copy that waits for the GPU)."""
    import torch

    key = str(like.device)
    if key not in _SEXTANTS:
        _SEXTANTS[key] = torch.tensor([5.0, 3.0, 1.0], device=like.device).view(1, 3, 1, 1)
    return _SEXTANTS[key]
