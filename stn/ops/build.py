"""`python -m stn.ops.build`: compile the C++ (and, where nvcc exists, CUDA) samplers once."""
from __future__ import annotations

import argparse
import time

from . import extension


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA sources even where nvcc exists")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    with_cuda = False if args.cpu_only else extension.cuda_home() is not None
    start = time.time()
    path = extension.build(with_cuda=with_cuda, verbose=not args.quiet)
    state = extension.state()
    if not state.loaded:
        raise SystemExit(f"built {path} but could not load it: {state.reason}")
    print(f"stn extension ({'C++ + CUDA' if with_cuda else 'C++ only'}) ready at {path} [{time.time() - start:.0f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
