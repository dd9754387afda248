"""Mergeable summaries: the math of every feature, in plain Python (no Beam import).

Each summary has an identity and an associative, commutative merge, so batch replay,
streaming panes and live micro-batches give the same state in any order (ARCHITECTURE.md,
principle 1). The Lua merge scripts in `stores/lua/` apply the same rules inside Redis.
"""
