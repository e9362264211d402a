"""The network lab: namespaces, veth pairs, a whole stack under supervisord, the demo.

A test and demo tool, not server runtime: no stage imports it (tests/unit/test_layout.py).
"""
