"""Test and benchmark oracles: independent references that library code is checked against.

Nothing in ``edgekit`` imports these. Import them as ``tests.oracles.<name>`` with the repository
root on ``sys.path`` (pytest adds it; benchmarks and tools insert it themselves).
"""
