"""Benchmarks: queuectl side by side with the machine's limit and peer queues.

``python -m bench`` (or ``make bench``) installs the peers it compares against
(task-spooler and nq from Debian, huey with its SQLite storage from PyPI in a
separate virtual environment), runs every measurement with repetitions
interleaved (queuectl, peer, queuectl, peer, ...) so that drift on a shared
machine cancels out, saves the figures as JSON under ``bench/results/`` and
rewrites the table and chart of ``docs/benchmarks.md``.

``python -m bench --quick`` is the short version for tracking: it uses the peers
already installed and prints one JSON object as its last line.

The concurrency section (:mod:`bench.conc`) runs N jobs of ``sleep`` at once in
queuectl and in task-spooler (``-S N``) and measures the queue's own memory, the time
until all N run and its CPU while they do; ``--only concurrency --conc 10,100`` runs
just that, for those N.

``python -m bench.pg [--rounds N] [--quick]`` (:mod:`bench.pg`) measures the PostgreSQL
store: drains by 1, 2 and 3 daemons sharing one database beside one SQLite daemon and the
machine's ceiling, pickup across hosts, and claim cost at 1,000,000 jobs; it saves
``bench/results/pg-*.json`` and prints a Markdown section for ``docs/postgres.md``.
"""
