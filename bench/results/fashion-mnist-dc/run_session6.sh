#!/bin/bash
# Session 6 (2026-12-05), one cell at a time at 2 threads after the teacher had finished:
# random real, recipe dc, IPC 1 seeds 5-19 and IPC 50 seeds 0-1; recipe dc-plain, IPC 50 seeds 0-1, IPC 10 and 1 seed 0.
cd OUT
for cell in "1 5" "1 6" "1 7" "1 8" "1 9" "1 10" "1 11" "1 12" "1 13" "1 14" "1 15" "1 16" "1 17" "1 18" "1 19" "50 0" "50 1"; do
  D3HR_QUIET=1 python cell.py $cell OUT dc
done
for cell in "50 0" "50 1" "10 0" "1 0"; do
  D3HR_QUIET=1 python cell.py $cell OUT dc-plain
done
# then the table, every cell skipped (already evaluated), rows merged with those already in OUT/results.json:
d3hr compare --dataset fashion-mnist --methods random-real --ipc 50 --seeds 2 --recipes dc,dc-plain --out OUT
d3hr compare --dataset fashion-mnist --methods random-real --ipc 1,10 --seeds 0-0 --recipes dc-plain --out OUT
