"""The relay benchmark's harness: load generator and minimal anchor relays.

Written by this team for the relay performance notes (first kept beside the checkout in
``../shared/perf``), vendored here so ``bench/relay_bench.py`` runs from a fresh clone.
Nothing in here imports rtgate: it measures rtgate from outside, as a client and an upstream.
"""
