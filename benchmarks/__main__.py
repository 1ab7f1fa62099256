"""`python -m benchmarks [NAME...]`: run the benchmarks and print each ratio against its same-run baseline."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main(names: list[str]) -> int:
    modules = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith("bench_"))
    for name in modules:
        if names and name.removeprefix("bench_") not in names and name not in names:
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"# {name}: {(module.__doc__ or '').strip().splitlines()[0]}")
        for comparison in module.run():
            print(comparison.report())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
