#!/bin/bash
# each chunk under the lock, at most 9.5 minutes; an unfinished training resumes from its checkpoint
cd /tmp/wt13-snap
for cell in "1 0" "1 1" "1 2" "1 3" "1 4" "10 0" "10 1" "10 2" "50 0" "10 3" "10 4" "50 1" "50 2"; do
  set -- $cell
  for try in 1 2 3 4 5; do
    if PYTHONPATH=/tmp/wt13-snap/src D3HR_QUIET=1 flock /tmp/d3hr-heavy.lock timeout 570 nice -n 5 /work/main/.venv/bin/python cell.py $1 $2 /tmp/wt13-dc >> /tmp/wt13-dc/log.txt 2>&1; then break; fi
    echo "chunk ended (ipc $1 seed $2 try $try)" >> /tmp/wt13-dc/log.txt
  done
done
echo ALLDONE >> /tmp/wt13-dc/log.txt
