"""Speed benchmarks of the search and evaluation steps (run: ``python -m benchmarks``).

Every benchmark runs in its own fresh Python process, so peak RSS is per benchmark and
no allocator or thread-pool state leaks from one into the next. Each prints one JSON
object per line; see benchmarks/run.py for the options.
"""
