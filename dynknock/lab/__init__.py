"""knock-demo and the network lab it runs in: namespaces, veth pairs, a whole stack under supervisord.

Only what knock-demo needs ships here; the tests and benchmarks import tests/lab, which adds what
only they use. No stage imports it (tests/unit/test_layout.py).
"""
