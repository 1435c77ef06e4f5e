"""Run every benchmark (`python -m bench`) or the named ones (`python -m bench gateway`).

Options after one benchmark's name go to it: `python -m bench history --sizes-sqlite 1e6`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run bench_<name>.main() for each selected benchmark module."""
    names = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(
        [str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    chosen, options = argv[:split] or names, argv[split:]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
        return 2
    if options and len(chosen) != 1:
        print(f"options {options} need exactly one benchmark named before them",
              file=sys.stderr)
        return 2
    for name in chosen:
        module = importlib.import_module(f"bench.bench_{name}")
        if options and "argv" not in inspect.signature(module.main).parameters:
            print(f"bench {name} takes no options (its settings are environment variables: "
                  "see its docstring)", file=sys.stderr)
            return 2
        print(f"\n=== bench {name} ===", flush=True)
        module.main(options) if options else module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
