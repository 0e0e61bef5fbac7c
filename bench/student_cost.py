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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="convnet,convnet_d4,resnet18,vgg11")
    ap.add_argument("--images", type=int, default=100, help="images per epoch (one step per 256)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after one untimed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from d3hr.utils.heap import keep_freed_memory

    keep_freed_memory()  # as the d3hr command does
    import torch

    from d3hr.evaluation.recipes import get_recipe
    from d3hr.evaluation.students import create_student
    from d3hr.evaluation.train import make_optimizer, train_one_epoch
    from d3hr.utils.dist import kernels
    from d3hr.utils.seeding import generator_for

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, args.channels, args.size, args.size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    recipe = get_recipe("dc").resolve(flip=True)
    steps = args.epochs * -(-args.images // recipe.batch_size)
    print(f"{args.images} images of {args.channels}x{args.size}x{args.size}, recipe dc (batch {recipe.batch_size}), "
          f"{args.epochs} timed epochs, {args.threads} threads, {kernels('cpu')}")
    print(f"{'student':<12} {'s/step':>8} {'vs first':>9}")
    first = None
    for name in args.students.split(","):
        torch.manual_seed(0)
        model = create_student(name, 10, args.channels, args.size)
        opt = make_optimizer(model, recipe)
        order, aug = generator_for(0, "order"), generator_for(0, "augment")
        train_one_epoch(model, x, y, opt, recipe, 0, order, aug)  # warm-up, untimed
        t0 = time.perf_counter()
        for e in range(args.epochs):
            train_one_epoch(model, x, y, opt, recipe, e + 1, order, aug)
        per_step = (time.perf_counter() - t0) / steps
        first = first or per_step
        print(f"{name:<12} {per_step:8.3f} {per_step / first:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
