"""How a soft-label teacher answers on the views a ``rded`` student is trained on.

The student of the soft-label protocol is fitted to the teacher's logits at temperature T on random-resized crops
(scale 0.08-1) mixed by CutMix, not on clean images. This prints, per cached teacher, on a fixed slice of the test
set: top-1 on clean images, on crops and on crops + CutMix (batches of the recipe's size, scored against the label
of the larger share), the mean top probability at T = 1 and at the recipe's T, the entropy of the T-softened
targets (1 = uniform) and the spread of the logits. Inference only; any cached teacher file can be named.

    python bench/teacher_views.py ~/.cache/d3hr/teachers/fashion-mnist-*/convnet-*-{4,30,60}ep.safetensors
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from d3hr.config import DataConfig
from d3hr.data import load_dataset
from d3hr.evaluation.recipes import get_recipe
from d3hr.evaluation.teacher import flip_default, load_teacher
from d3hr.evaluation.train import augment, to_input


def readouts(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """Top-1, mean top probability at T = 1 and T, entropy of softmax(logits / T) over log(classes), logit std."""
    p1, pt = logits.softmax(1), (logits / temperature).softmax(1)
    entropy = -(pt * pt.clamp_min(1e-12).log()).sum(1).mean() / math.log(logits.shape[1])
    return {"top1": 100 * float((logits.argmax(1) == labels).float().mean()),
            "maxp_t1": float(p1.max(1).values.mean()), "maxp_t": float(pt.max(1).values.mean()),
            "entropy_t": float(entropy), "logit_std": float(logits.std(1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teachers", nargs="+", type=Path, help="cached teacher .safetensors files")
    ap.add_argument("--dataset", help="the test set (default: the one the first teacher was trained on)")
    ap.add_argument("--every", type=int, default=5, help="use every n-th test image")
    ap.add_argument("--recipe", default="rded")
    args = ap.parse_args()
    torch.manual_seed(0)
    dataset = args.dataset or load_teacher(args.teachers[0])[1]["dataset"]
    test = load_dataset(DataConfig(name=dataset), "test")
    idx = torch.arange(0, len(test), args.every).numpy()
    x = to_input(torch.as_tensor(test.load(idx)))  # the teacher recipe's input scaling ([-1, 1])
    y = torch.as_tensor(test.targets[idx])
    flip = flip_default(dataset)
    rcp = get_recipe(args.recipe).resolve(flip)
    crops = get_recipe(args.recipe, augment="rrc").resolve(flip)
    print(f"{len(idx)} test images, recipe {rcp.name} (T = {rcp.temperature}, crop scale {rcp.crop_scale})")
    print("| teacher | test top-1 | view | top-1 | mean max p (T=1) | mean max p (T) | entropy at T | logit std |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.teachers:
        model, meta = load_teacher(path)
        model.eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            mixed, mixed_y = [], []
            for lo in range(0, len(x), rcp.batch_size):  # CutMix draws one box per batch, as in training
                xb, yb = x[lo:lo + rcp.batch_size], y[lo:lo + rcp.batch_size]
                xm, perm, lam = augment(xb, rcp, gen)
                mixed.append(xm)
                mixed_y.append(yb if perm is None or lam >= 0.5 else yb[perm])  # the larger share's label
            views = {"clean": (x, y), "crops": (augment(x, crops, torch.Generator().manual_seed(0))[0], y),
                     "crops + CutMix": (torch.cat(mixed), torch.cat(mixed_y))}
            for name, (v, labels) in views.items():
                r = readouts(model(v), labels, rcp.temperature or 1.0)
                print(f"| {path.stem} | {100 * meta.get('test_top1', float('nan')):.2f} | {name} | {r['top1']:.1f} | "
                      f"{r['maxp_t1']:.3f} | {r['maxp_t']:.3f} | {r['entropy_t']:.3f} | {r['logit_std']:.2f} |")


if __name__ == "__main__":
    main()
