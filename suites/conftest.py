"""The suites are pytest tests run by ``ipsec-interop run``; this loads the harness plugin
so that plain ``pytest suites/ --ipsec-peer ...`` works the same way."""

pytest_plugins = ["harness.pytest_plugin"]
