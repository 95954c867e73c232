"""Run a module as `python -m MODULE ARGS...` would, then write the peak GPU memory torch saw to a
file (0 when torch was not used or there is no GPU), so `bench/separation.py` can compare the
demucs CLI and `soundforge separate` as whole processes on a GPU host.

    python -m bench.peak_memory OUT.txt MODULE [ARGS...]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def peak_gpu_bytes() -> int:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0
    return int(max(torch.cuda.max_memory_allocated(device)
                   for device in range(torch.cuda.device_count())))  # fmt: skip


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    code: int | str | None = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
    Path(out).write_text(f"{peak_gpu_bytes()}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
