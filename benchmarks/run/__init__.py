"""sla-daemon end to end: notification latency, throughput, escalation, sweep, writers, memory.

    python -m benchmarks.run [--quick] [--only part,...] [--json out.json]

Everything is real except Twilio: an embedded PostgreSQL 16 (pgserver) with default
durability (fsync and synchronous_commit on: the daemon's claims and finishes are
commits, so turning durability off would flatter exactly what is measured; ``--fast``
exists for comparison only), the real daemon (``python -m sla_daemon run``, one
process per part, so each part's peak RSS is its own), and a recording fake Twilio
(``benchmarks.recording_twilio``, a process) that the daemon's real twilio-python
client posts to. The send rate limit is raised to 100,000/s: the default 80/s is
Twilio's production limit for one sender, not something to benchmark.

Parts (``--only``):

  latency      commit of a status UPDATE -> fake Twilio receives the message; open-loop
               at a fixed rate (scheduled by absolute time), one ticket per update.
  backlog      daemon stopped; 8 writers commit one update on each of N distinct
               tickets; then the daemon starts: messages/s until the last arrives.
  live         daemon running; 8 writers commit N updates on distinct tickets as fast
               as they can: messages/s end to end.
  escalation   tickets whose response deadlines fall 1 ms apart, 2 s ahead:
               escalated_at - deadline.
  sweep        a large tickets table (bulk-loaded, triggers off); one UPDATE makes
               K of them fall due a few seconds later: time until all are escalated,
               and the EXPLAIN (ANALYZE, BUFFERS) plan of the breach query.
  writer_overhead   ``python -m benchmarks.writer_overhead`` (pgbench), embedded.
  insert_rate  ``python -m benchmarks.insert_rate`` (pgbench), embedded: ticket INSERTs
               on a business-hours calendar against 24/7 (target >= 0.8x, the lowest
               ratio over the client counts).

Lost = outbox rows not ending 'sent'/'superseded', or expected messages never
received; duplicates = the same (ticket, status) received more than once. Progress
goes to stderr; one JSON document to stdout (and to ``--json FILE``).

Layout: ``common`` (sizes, statistics, constants), ``processes`` (the daemon and
fake Twilio processes, stopped by PID), ``measure`` (CPU, waits), ``rss`` (peak
memory), ``records`` (what the fake received, reconciled), ``bench`` (the one
set-up every part shares: template database, a part's database, connection and
daemon), one module per part (``latency``, ``drain``, ``live``, ``escalation``,
``sweep``, ``overhead``, ``insert_rate``; the last two run a program of their own
through ``child``), ``targets`` and ``main``.
"""
