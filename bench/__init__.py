"""The benchmark: bench/run.py runs it, bench/loadgen.py drives the clients (see README.md)."""
