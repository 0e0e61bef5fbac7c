"""One random-real cell: distill (select real images) and evaluate one seed with the dc recipe; resumable."""
import sys

import torch

from d3hr import api
from d3hr.config import load_config, nest
from d3hr.evaluation import evaluate
from d3hr.utils.heap import keep_freed_memory

ipc, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
keep_freed_memory()  # as the d3hr command does
run = f"{out}/runs/random-real-ipc{ipc}-seed{seed}"  # the layout of d3hr compare, which then reads these cells
cfg = load_config(None, [nest("data.name", "fashion-mnist"), nest("select.method", "random-real"),
                         nest("select.ipc", ipc), nest("seed", seed), nest("out", run)])
api.distill(cfg)
res = evaluate(cfg.out, labels="hard", recipe=sys.argv[4] if len(sys.argv) > 4 else "dc", seeds=[seed])
print("RESULT", ipc, seed, res["records"][0]["top1"], res["records"][0]["seconds"], flush=True)
