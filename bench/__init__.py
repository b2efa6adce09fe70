"""chatcli's benchmark suite: ``python -m bench`` (see README.md, "Benchmarks")."""
