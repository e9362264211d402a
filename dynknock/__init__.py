"""dynknock: the stages (capture, auth, gate, relay, client) and what they share.

Layers, bottom up; an import only ever goes down (tests/unit/test_layout.py):
  wire      protocol, fields, keys, rules: the packets, their field types, keys and value rules client,
            capture and auth all share;
            curve25519: the client's Ed25519 and X25519 in pure Python
  shared    bus, topics, limits, transport, config, stage, events, metrics, replies, rundir, reasons
            (server runtime)
  stages    capture, auth, gate, relay, client; the tools busd, tap, status
  lab       lab.netlab, lab.stack, lab.demo: knock-demo's namespaces and stack (tests/lab extends them)
"""
