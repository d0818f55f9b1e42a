-- Named queries, loaded once at import by sla_daemon.db. Each starts with
-- "-- name: <name>" and runs as one statement. The rules themselves live in the
-- stored functions of migrations/; these only call them or read tables.

-- name: sla_config_for
SELECT response_hours::float8 AS response_hours, resolution_hours::float8 AS resolution_hours,
       warning_threshold_pct, source
FROM sla_daemon.sla_config_for($1::uuid, $2::text);

-- name: compute_deadlines
SELECT response_deadline, resolution_deadline, warning_threshold_pct, source
FROM sla_daemon.compute_deadlines($1::uuid, $2::text, $3::timestamptz, $4::boolean);

-- name: set_ticket_deadlines
UPDATE public.tickets t
SET sla_response_deadline = d.response_deadline,
    sla_resolution_deadline = d.resolution_deadline
FROM public.tickets src
LEFT JOIN LATERAL sla_daemon.compute_deadlines(src.tenant_id, src.category, src.created_at,
                                               src.is_sensitive) d ON true
WHERE t.id = $1::uuid AND src.id = t.id
RETURNING t.sla_response_deadline, t.sla_resolution_deadline;

-- name: breached_tickets
SELECT id, tracking_number, tenant_id, category, status, breach_type, deadline, overdue_by_hours
FROM sla_daemon.breached_tickets
ORDER BY deadline;

-- name: due_warnings
SELECT ticket_id, tracking_number, tenant_id, category, status, deadline_kind, deadline, warn_at
FROM sla_daemon.due_warnings
ORDER BY warn_at;

-- name: tidy_deadlines
SELECT sla_daemon.tidy_deadlines();

-- name: record_warnings
SELECT ticket_id, tracking_number, deadline_kind, deadline, warn_at
FROM sla_daemon.record_warnings($1::integer);

-- name: escalate_ticket
SELECT escalated, outcome, breach_type, manager_id, tracking_number
FROM sla_daemon.escalate_ticket($1::uuid, $2::text);

-- name: escalation_failed
SELECT sla_daemon.escalation_failed($1::uuid, $2::text) AS retry_at;

-- name: escalation_lock_holder
SELECT sla_daemon.escalation_lock_holder($1::uuid);

-- name: next_event_at
SELECT sla_daemon.next_event_at(coalesce($1::timestamptz, now())) AS next_at, now() AS db_now;

-- name: timer_awake
UPDATE sla_daemon.wakeups SET wake_at = 'infinity' WHERE name = 'timer' RETURNING now();

-- name: set_timer_wake
UPDATE sla_daemon.wakeups SET wake_at = $1::timestamptz WHERE name = 'timer';

-- name: claim_outbox
SELECT id, claim_token, ticket_id, kind, old_status, new_status, attempts, created_at,
       tracking_number, phone, language
FROM sla_daemon.claim_outbox($1::text, $2::integer, $3::float8);

-- name: extend_outbox
SELECT id FROM sla_daemon.extend_outbox($1::bigint, $2::bigint[], $3::float8) AS e(id);

-- name: finish_outbox
SELECT sla_daemon.finish_outbox($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                $5::integer[], $6::text[], $7::float8[], $8::text[]);

-- name: outbox_sleep
SELECT sla_daemon.outbox_sleep();

-- name: outbox_awake
SELECT sla_daemon.outbox_awake();

-- name: outbox_release
SELECT sla_daemon.outbox_release();

-- name: requeue_dead
SELECT sla_daemon.requeue_dead($1::bigint[]);

-- name: outbox_backlog
SELECT count(*) FILTER (WHERE state IN ('pending', 'sending'))
           + (SELECT count(*) FROM sla_daemon.outbox_intake) AS backlog,
       count(*) FILTER (WHERE state = 'dead') AS dead
FROM sla_daemon.outbox
WHERE state IN ('pending', 'sending', 'dead');

-- name: health
SELECT 1;

-- name: purge_outbox
-- Finished rows past retention, a batch at a time (dead rows stay until handled). Each
-- ticket's newest row stays, so "is this the ticket's newest status" (claims,
-- retry-dead) never looks past a purged row.
WITH old AS (
    SELECT o.id FROM sla_daemon.outbox o
    WHERE o.state IN ('sent', 'superseded', 'dry_run')
      AND o.finished_at < now() - $1::float8 * interval '1 day'
      AND EXISTS (SELECT 1 FROM sla_daemon.outbox n WHERE n.ticket_id = o.ticket_id AND n.id > o.id)
    LIMIT $2
), gone AS (
    DELETE FROM sla_daemon.outbox o USING old WHERE o.id = old.id RETURNING 1
)
SELECT count(*)::integer AS deleted FROM gone;

-- name: check_server
-- (this and the queries below serve the command line: check, report, outbox)
SELECT current_setting('server_version') AS server_version, current_database() AS database,
       current_user AS db_user;

-- name: check_applied_migrations
SELECT version, name, checksum FROM sla_daemon.schema_migrations ORDER BY version;

-- name: report_tickets
-- SLA report per municipality and category, aggregated here (never ticket by ticket in
-- Python), with per-municipality subtotals (category NULL, level 1) and a grand total
-- (level 3). $1 is the period (an interval ending now). Sensitive tickets are not
-- SLA-monitored and never counted. Snapshot columns count tickets as they are now:
--   open / in_progress / escalated: by status;
--   breached: in sla_daemon.breached_tickets (missed a deadline, not yet escalated);
--   at_risk: open or in progress, not breached, and past a warning threshold: its
--            warning is recorded in sla_daemon.events for its current deadline, or is
--            due (sla_daemon.due_warnings) but not yet recorded.
-- Period columns count tickets created in the period that have an SLA deadline:
--   measured: their outcome is known: resolved or closed, or escalated (by status, or
--             by an escalation event), or breached now;
--   met:      resolved or closed and never escalated by the daemon (no escalation event).
-- (tickets have no resolved_at: "resolved in time" is "resolved without an escalation")
WITH period AS (
    SELECT now() - $1::interval AS since
), escalated_by_daemon AS (
    SELECT DISTINCT e.ticket_id
    FROM sla_daemon.events e, period p
    WHERE e.kind = 'escalation' AND e.created_at >= p.since
), t AS (
    SELECT tk.tenant_id, lower(tk.category) AS category, tk.status::text AS status,
           b.id IS NOT NULL AS breached,
           (tk.status IN ('open', 'in_progress') AND b.id IS NULL AND (
                EXISTS (SELECT 1 FROM sla_daemon.due_warnings d WHERE d.ticket_id = tk.id)
                OR EXISTS (
                    SELECT 1 FROM sla_daemon.events e
                    WHERE e.kind = 'warning' AND e.ticket_id = tk.id AND e.deadline > now()
                      AND ((e.deadline_kind = 'response' AND tk.status = 'open'
                            AND e.deadline = tk.sla_response_deadline)
                        OR (e.deadline_kind = 'resolution'
                            AND e.deadline = tk.sla_resolution_deadline))))) AS at_risk,
           tk.created_at >= p.since AS in_period,
           (tk.created_at >= p.since AND tk.sla_resolution_deadline IS NOT NULL
            AND (tk.status IN ('resolved', 'closed', 'escalated') OR b.id IS NOT NULL
                 OR x.ticket_id IS NOT NULL)) AS measured,
           (tk.created_at >= p.since AND tk.sla_resolution_deadline IS NOT NULL
            AND tk.status IN ('resolved', 'closed') AND x.ticket_id IS NULL) AS met
    FROM public.tickets tk
    CROSS JOIN period p
    LEFT JOIN sla_daemon.breached_tickets b ON b.id = tk.id
    LEFT JOIN escalated_by_daemon x ON x.ticket_id = tk.id
    WHERE tk.is_sensitive IS FALSE
      AND (tk.status IN ('open', 'in_progress', 'escalated') OR tk.created_at >= p.since)
)
SELECT GROUPING(t.tenant_id, t.category) AS level, t.tenant_id,
       max(m.name) AS municipality, t.category,
       count(*) FILTER (WHERE t.status = 'open') AS open,
       count(*) FILTER (WHERE t.status = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE t.at_risk) AS at_risk,
       count(*) FILTER (WHERE t.breached) AS breached,
       count(*) FILTER (WHERE t.status = 'escalated') AS escalated,
       count(*) FILTER (WHERE t.in_period) AS created,
       count(*) FILTER (WHERE t.measured) AS measured,
       count(*) FILTER (WHERE t.met) AS met
FROM t
LEFT JOIN public.municipalities m ON m.id = t.tenant_id
GROUP BY GROUPING SETS ((t.tenant_id, t.category), (t.tenant_id), ())
ORDER BY GROUPING(t.tenant_id), max(m.name), t.tenant_id, GROUPING(t.category), t.category;

-- name: report_outbox
SELECT now() AS generated_at, now() - $1::interval AS since,
       count(*) FILTER (WHERE state IN ('pending', 'sending')) AS backlog,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE state IN ('pending', 'sending'))
              )::float8 AS oldest_pending_seconds
FROM sla_daemon.messages
WHERE state IN ('pending', 'sending', 'dead');

-- name: report_dead_by_code
SELECT error_code, count(*) AS count, (array_agg(last_error ORDER BY id DESC))[1] AS example
FROM sla_daemon.outbox
WHERE state = 'dead'
GROUP BY error_code
ORDER BY count(*) DESC, error_code NULLS LAST;

-- name: list_dead
SELECT o.id, t.tracking_number, o.kind, o.new_status, o.attempts, o.error_code, o.last_error,
       o.finished_at
FROM sla_daemon.outbox o
LEFT JOIN public.tickets t ON t.id = o.ticket_id
WHERE o.state = 'dead'
ORDER BY o.id DESC
LIMIT $1::integer;

-- name: session_read_only
-- The daemon's health check: true where this session cannot write (a database or role
-- made read-only, a standby after a failover).
SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery() AS read_only;
-- name: purge_events
-- Warning and escalation events past retention, a batch at a time, through a function
-- of the schema's owner: the daemon's role may not delete from the event log itself.
-- Events of tickets still open or in progress stay (a warning's event is what keeps it
-- from being given twice while its deadline is live).
SELECT sla_daemon.purge_events($1::float8, $2::integer) AS deleted;

-- name: calendar_today
SELECT (now() AT TIME ZONE 'Africa/Johannesburg')::date;

-- name: holiday_countries
SELECT DISTINCT holiday_country AS country FROM sla_daemon.calendars
WHERE holiday_country IS NOT NULL;

-- name: load_public_holidays
SELECT sla_daemon.load_public_holidays($1::text, $2::date, $3::date, $4::date[], $5::text[],
                                       $6::text);

-- name: has_calendars
SELECT pg_catalog.to_regclass('sla_daemon.public_holidays') IS NOT NULL;

-- name: due_levels
-- Escalated tickets whose next escalation level is due (index on due_at).
SELECT ticket_id FROM sla_daemon.level_schedule
WHERE due_at <= now()
ORDER BY due_at
LIMIT $1::integer;

-- name: escalate_levels
SELECT outcome, level, assigned_to, tracking_number, overdue_hours
FROM sla_daemon.escalate_levels($1::uuid);

-- name: level_failed
SELECT sla_daemon.level_failed($1::uuid, $2::text) AS retry_at;

-- name: define_calendar
SELECT sla_daemon.define_calendar($1::text, $2::text, $3::text);

-- name: set_calendar_hours
SELECT sla_daemon.set_calendar_hours($1::text, $2::smallint[], $3::text[]::time[],
                                     $4::text[]::time[]);

-- name: explain_ticket
SELECT sla_daemon.explain_ticket($1::text)::text;

-- name: add_closure
SELECT sla_daemon.add_closure($1::text, $2::date, $3::text);

-- name: remove_closure
SELECT sla_daemon.remove_closure($1::text, $2::date);

-- name: assign_calendar
SELECT sla_daemon.assign_calendar($1::uuid, $2::text, $3::text);

-- name: add_public_holiday
SELECT sla_daemon.add_public_holiday($1::text, $2::date, $3::text);
