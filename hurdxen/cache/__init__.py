"""The shared stage cache on an OCI registry: build a stage once, pull it everywhere, trust nothing unsigned.

config (settings, limits), registry (a bounded OCI distribution client), trust (OpenPGP signatures of entries),
entry (one stage as one artifact: push, check, pull), hook (the generic stage task's use of it), cli
(`hurdxen cache ls/verify/prune`). Not a stage: every stage gets it through tasks.stage_tasks.
"""
