"""Side-by-side benchmarks of taskfuture and other Python task queues.

``python -m benchmarks.run --full`` (or ``make bench``) builds one virtual
environment per peer library under ``benchmarks/.envs/``, measures every
library on the engines it supports, and writes ``benchmarks/results/*.json``,
``benchmarks/plots/*.png`` and ``BENCHMARKS.md``. Modules in this package
import only the standard library at the top level, because the same code runs
under every peer's interpreter.
"""
