#!/bin/bash
# The README main job three times; each run's output and run files kept for comparison.
cd /work/main
source .venv/bin/activate
export OMP_NUM_THREADS=1
for i in 1 2 3; do
  echo "=== demo $i start $(date -u +%T)"
  ( time timeout 900 recipes/launch/tiny_cpu.sh --port 8011 ) > /tmp/s3/demo_$i.txt 2>&1
  echo "=== rc $? end $(date -u +%T)"
  rm -rf /tmp/s3/demo_runs_$i && cp -r .tiny/miniature/demo /tmp/s3/demo_runs_$i
done
echo DEMODONE
