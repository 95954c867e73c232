#!/usr/bin/env bash
# The GPU figures of issue 16, for a GPU host without network (see ../shared/gpu/README.md).
# Here, with the package index:   bash ../shared/gpu/fetch_wheels.sh
# There, from the project root:   bash bench/gpu_check.sh        (about 5 minutes on an H200)
# 1. fp32 stems equal the CLI's within 1e-4 with batched segments (.gpu/check_separation.sh);
# 2. bench.separation's device set: one 10-minute song and 10 four-minute songs, the CLI and
#    SoundForge side by side (wall, audio seconds per second, peak GPU memory), per precision;
#    for the 10 songs, ours with 4 songs sharing the batches (cross-song) and one at a time.
# Before spending device time, the same Python paths on the CPU (tiny model, short songs): the
# smoke command in bench/separation.py's docstring.
set -u
cd "$(dirname "$0")/.." || exit 1
[ -d .gpu ] || { echo "no .gpu/ here: run ../shared/gpu/fetch_wheels.sh first"; exit 1; }
bash .gpu/check_separation.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m bench.separation speed --device cuda --precision fp32 bf16 fp16 --shifts 0
