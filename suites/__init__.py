"""Conformance suites, one module per suite of the catalogue (``suites/test_<suite>.py``).

Each case is a pytest test declared with :func:`harness.cases.case`.
"""
