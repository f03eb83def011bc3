"""Benchmarks of flmm against the plain frozen forward and the reference recipe's configuration.

`tools/benchmark.py` runs the suites: `capture` (plain / hooked / eager forward over sequence lengths),
`train` (samples/s and peak memory of flmm's step vs the reference-equivalent configuration of the same
code, with and without the SAM embedding cache), `eval` (queries/s of an evaluation) and `memory` (the
analytic memory table of the 7B recipe). Models have the real architectures and random weights.
"""
