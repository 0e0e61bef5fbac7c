"""What one training step of each student costs, side by side in one run: the factors ``bench/campaign.py`` uses to
estimate the cross-architecture parts (a student trained on the same cells as ConvNet-3).

Each student takes the real training step of ``d3hr.evaluation.train.train_one_epoch`` (recipe ``dc``: SGD, DSA
augmentation) on random uint8 images of the dataset's shape, one untimed epoch and then ``--epochs`` timed ones, in
this process, one after the other. Printed: seconds per step and the ratio to the first student.

    OMP_NUM_THREADS=2 python bench/student_cost.py                        # 100 images of 1x28x28 (IPC 10)
    OMP_NUM_THREADS=2 python bench/student_cost.py --students convnet,resnet18 --images 500 --size 32 --channels 3
"""

from __future__ import annotations

import argparse
import time


def step_seconds(name: str, images: int = 100, size: int = 28, channels: int = 1, epochs: int = 3,
                 threads: int = 2) -> float:
    """Seconds per training step of student ``name`` (recipe ``dc``) on ``images`` random uint8 images of shape
    (channels, size, size): one untimed epoch, then ``epochs`` timed ones."""
    from d3hr.utils.heap import keep_freed_memory

    keep_freed_memory()  # as the d3hr command does
    import torch

    from d3hr.evaluation.recipes import get_recipe
    from d3hr.evaluation.students import create_student
    from d3hr.evaluation.train import make_optimizer, train_one_epoch
    from d3hr.utils.seeding import generator_for

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, channels, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (images,), generator=gen)
    recipe = get_recipe("dc").resolve(flip=True)
    torch.manual_seed(0)
    model = create_student(name, 10, channels, size)
    opt = make_optimizer(model, recipe)
    order, aug = generator_for(0, "order"), generator_for(0, "augment")
    train_one_epoch(model, x, y, opt, recipe, 0, order, aug)  # warm-up, untimed
    t0 = time.perf_counter()
    for e in range(epochs):
        train_one_epoch(model, x, y, opt, recipe, e + 1, order, aug)
    return (time.perf_counter() - t0) / (epochs * -(-images // recipe.batch_size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="convnet,convnet_d4,resnet18,vgg11")
    ap.add_argument("--images", type=int, default=100, help="images per epoch (one step per 256)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after one untimed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from d3hr.evaluation.recipes import get_recipe
    from d3hr.utils.dist import kernels

    print(f"{args.images} images of {args.channels}x{args.size}x{args.size}, recipe dc (batch "
          f"{get_recipe('dc').batch_size}), "
          f"{args.epochs} timed epochs, {args.threads} threads, {kernels('cpu')}")
    print(f"{'student':<12} {'s/step':>8} {'vs first':>9}")
    first = None
    for name in args.students.split(","):
        per_step = step_seconds(name, args.images, args.size, args.channels, args.epochs, args.threads)
        first = first or per_step
        print(f"{name:<12} {per_step:8.3f} {per_step / first:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
