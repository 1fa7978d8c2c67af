"""Helpers of the benchmark smoke tests."""

from __future__ import annotations

import argparse


def bench_args(module, *argv):
    """The parsed command line ``compress bench NAME ARGV...`` of the benchmark ``module``."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])
