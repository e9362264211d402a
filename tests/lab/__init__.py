"""The lab of the tests and benchmarks: the installed dynknock.lab, plus what only they use.

knock-demo ships in the package and needs dynknock/lab/ alone: three namespaces on a bridge
(netlab), the whole stack under supervisord in the server's (stack). The tests and benchmarks
import their lab from here instead: the same names, re-exported, and what the demo never uses
(more hosts on the bridge, thousands of client addresses, tcpdump; users written straight to a
users file, a stack per test module, the bus's event log, killing a stage). None of it is
installed (pyproject.toml's packages), so none of it reaches a server.
"""
