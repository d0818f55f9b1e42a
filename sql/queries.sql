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
-- $2: also queue a staff alert to each ticket's team manager (SLA_DAEMON_WARN_TEAM_MANAGER).
SELECT ticket_id, tracking_number, deadline_kind, deadline, warn_at, staff_alert
FROM sla_daemon.record_warnings($1::integer, $2::boolean);

-- name: escalate_ticket
SELECT escalated, outcome, breach_type, manager_id, tracking_number, staff_alert
FROM sla_daemon.escalate_ticket($1::uuid, $2::text);

-- name: escalate_tickets
SELECT ticket_id, escalated, outcome, breach_type, manager_id, tracking_number, error, retry_at,
       staff_alert
FROM sla_daemon.escalate_tickets($1::uuid[], $2::text[]);

-- name: escalation_failed
SELECT sla_daemon.escalation_failed($1::uuid, $2::text) AS retry_at;

-- name: next_event_at
SELECT sla_daemon.next_event_at(coalesce($1::timestamptz, now())) AS next_at, now() AS db_now;

-- name: timer_awake
UPDATE sla_daemon.wakeups SET wake_at = 'infinity' WHERE name = 'timer' RETURNING now();

-- name: set_timer_wake
-- $1: the next instant the timer knows of (NULL: none). A deadline set sooner than it
-- wakes the timer (even when the safety interval would wake it first), so the next
-- deadline it reports is never stale.
UPDATE sla_daemon.wakeups SET wake_at = coalesce($1::timestamptz, 'infinity')
WHERE name = 'timer';

-- name: claim_outbox
SELECT id, claim_token, ticket_id, kind, old_status, new_status, attempts, created_at,
       tracking_number, phone, language, recipient_id, category, level, deadline_at, time_zone
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
-- Finished rows past retention (sent, superseded, dry run, and those that ended unsent
-- by design: opted out, withheld), a batch at a time (dead rows stay until handled). Each
-- stream's newest row stays (a ticket's citizen, and each staff member alerted about
-- it), so "is this the stream's newest" (claims, retry-dead) never looks past a purged row.
WITH old AS (
    SELECT o.id FROM sla_daemon.outbox o
    WHERE o.state IN ('sent', 'superseded', 'dry_run', 'opted_out', 'withheld')
      AND o.finished_at < now() - $1::float8 * interval '1 day'
      AND EXISTS (SELECT 1 FROM sla_daemon.outbox n
                  WHERE n.ticket_id = o.ticket_id AND n.id > o.id
                    AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id)
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
       CASE WHEN GROUPING(t.tenant_id) = 0 THEN max(m.name) END AS municipality, t.category,
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

-- name: report_cycles
-- Issue 12: SLA cycles started in the period ($1, an interval ending now), measured in
-- business hours on each ticket's calendar (24/7: wall-clock hours), per municipality
-- and category with the same grouping sets as report_tickets. First response and
-- resolution come from sla_daemon.cycle_outcomes (recorded by claim_outbox); targets
-- are the config's hours; the resolution clock leaves out the business time paused in
-- the cycle, the response clock does not. A cycle ends at its resolution, else at the
-- next cycle's start, else now.
--   responses / resolutions: cycles whose outcome is known (answered, or past target);
--   responses_met / resolutions_met: answered or resolved within the target;
--   response_overdue_hours / resolution_overdue_hours: business hours past the target,
--   summed (late answers and resolutions, and the running lateness of open ones).
WITH since AS (
    SELECT now() - $1::interval AS at
), cyc AS (
    SELECT tk.id, tk.tenant_id, lower(tk.category) AS category, tk.category AS raw_category,
           c.cycle, c.started_at,
           lead(c.started_at) OVER (PARTITION BY tk.id ORDER BY c.cycle) AS next_start
    FROM public.tickets tk
    CROSS JOIN LATERAL (SELECT 1 AS cycle, tk.created_at AS started_at
                        UNION ALL
                        SELECT y.cycle, y.started_at FROM sla_daemon.cycles y
                        WHERE y.ticket_id = tk.id) c
    WHERE tk.is_sensitive IS FALSE
      AND (tk.created_at >= (SELECT at FROM since)
           OR EXISTS (SELECT 1 FROM sla_daemon.cycles y
                      WHERE y.ticket_id = tk.id AND y.started_at >= (SELECT at FROM since)))
), clocks AS (
    SELECT cy.tenant_id, cy.category, o.first_response_at, o.resolved_at,
           cfg.response_hours::float8 AS response_target,
           cfg.resolution_hours::float8 AS resolution_target,
           sla_daemon.business_seconds(k.cal, cy.started_at,
               coalesce(o.first_response_at, cy.next_start, now())) / 3600 AS response_hours,
           (sla_daemon.business_seconds(k.cal, cy.started_at, e.ends_at)
            - coalesce((SELECT sum(sla_daemon.business_seconds(
                                   k.cal, p.started_at, least(coalesce(p.ended_at, now()), e.ends_at)))
                        FROM sla_daemon.pauses p
                        WHERE p.ticket_id = cy.id AND p.started_at >= cy.started_at
                          AND p.started_at < e.ends_at), 0)) / 3600 AS resolution_hours
    FROM cyc cy
    LEFT JOIN sla_daemon.cycle_outcomes o ON o.ticket_id = cy.id AND o.cycle = cy.cycle
    CROSS JOIN LATERAL sla_daemon.sla_config_for(cy.tenant_id, cy.raw_category) cfg
    CROSS JOIN LATERAL (SELECT sla_daemon.calendar_for(cy.tenant_id, cy.raw_category) AS cal) k
    CROSS JOIN LATERAL (SELECT coalesce(o.resolved_at, cy.next_start, now()) AS ends_at) e
    WHERE cy.started_at >= (SELECT at FROM since)
), judged AS (
    SELECT c.tenant_id, c.category,
           c.first_response_at IS NOT NULL
               OR c.response_hours > c.response_target + 1e-6 AS response_known,
           c.first_response_at IS NOT NULL
               AND c.response_hours <= c.response_target + 1e-6 AS response_met,
           c.resolved_at IS NOT NULL
               OR c.resolution_hours > c.resolution_target + 1e-6 AS resolution_known,
           c.resolved_at IS NOT NULL
               AND c.resolution_hours <= c.resolution_target + 1e-6 AS resolution_met,
           greatest(c.response_hours - c.response_target, 0) AS response_overdue,
           greatest(c.resolution_hours - c.resolution_target, 0) AS resolution_overdue
    FROM clocks c
)
SELECT GROUPING(j.tenant_id, j.category) AS level, j.tenant_id, j.category,
       count(*) AS cycles,
       count(*) FILTER (WHERE j.response_known) AS responses,
       count(*) FILTER (WHERE j.response_met) AS responses_met,
       count(*) FILTER (WHERE j.resolution_known) AS resolutions,
       count(*) FILTER (WHERE j.resolution_met) AS resolutions_met,
       round(coalesce(sum(j.response_overdue), 0)::numeric, 2)::float8 AS response_overdue_hours,
       round(coalesce(sum(j.resolution_overdue), 0)::numeric, 2)::float8
           AS resolution_overdue_hours
FROM judged j
GROUP BY GROUPING SETS ((j.tenant_id, j.category), (j.tenant_id), ());

-- name: report_levels
-- Issue 12: escalations in the period per level (1 at the deadline, 2.. the further
-- levels), with the same grouping sets as report_tickets.
SELECT GROUPING(t.tenant_id, lower(t.category)) AS level, t.tenant_id,
       lower(t.category) AS category, coalesce(e.level, 1)::integer AS escalation_level,
       count(*) AS breaches
FROM sla_daemon.events e
JOIN public.tickets t ON t.id = e.ticket_id
WHERE e.kind = 'escalation' AND e.created_at >= now() - $1::interval
  AND t.is_sensitive IS FALSE
GROUP BY GROUPING SETS ((t.tenant_id, lower(t.category), coalesce(e.level, 1)),
                        (t.tenant_id, coalesce(e.level, 1)), (coalesce(e.level, 1)))
ORDER BY 4;

-- name: report_outbox
SELECT now() AS generated_at, now() - $1::interval AS since,
       count(*) FILTER (WHERE state IN ('pending', 'sending')) AS backlog,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE state IN ('pending', 'sending'))
              )::float8 AS oldest_pending_seconds
FROM sla_daemon.messages
WHERE state IN ('pending', 'sending', 'dead');

-- name: report_staff_alerts
-- Issue 12: staff alerts queued in the period ($1, an interval ending now), per kind:
-- sent (or dry run), waiting (pending or sending), dead, and not sent by design
-- (superseded by a newer alert to the same person, opted out, withheld). Finished rows
-- leave the outbox after its retention, so a longer period counts fewer.
SELECT o.kind::text AS kind, count(*) AS queued,
       count(*) FILTER (WHERE o.state IN ('sent', 'dry_run')) AS sent,
       count(*) FILTER (WHERE o.state IN ('pending', 'sending')) AS waiting,
       count(*) FILTER (WHERE o.state = 'dead') AS dead,
       count(*) FILTER (WHERE o.state IN ('superseded', 'opted_out', 'withheld')) AS unsent
FROM sla_daemon.outbox o
WHERE o.recipient_id IS NOT NULL AND o.created_at >= now() - $1::interval
GROUP BY o.kind
ORDER BY o.kind::text;

-- name: report_unalerted
-- Issue 12: escalations in the period whose person could not be alerted (no phone
-- number, no such user), as recorded in the escalation event.
SELECT count(*) AS unalerted
FROM sla_daemon.events e
WHERE e.kind = 'escalation' AND e.created_at >= now() - $1::interval
  AND e.details ->> 'staff_alert' IN ('no_phone', 'no_user');

-- name: report_dead_by_code
SELECT error_code, count(*) AS count, (array_agg(last_error ORDER BY id DESC))[1] AS example
FROM sla_daemon.outbox
WHERE state = 'dead'
GROUP BY error_code
ORDER BY count(*) DESC, error_code NULLS LAST;

-- name: list_dead
SELECT o.id, t.tracking_number, o.kind, o.new_status, o.attempts, o.error_code, o.last_error,
       o.finished_at, o.recipient_id, o.level
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

-- name: delivery_plan
-- Issue 13: per claimed outbox row ($1 ids, $2 the numbers in E.164, NULL where
-- unusable), what decides whether and how it is sent.
SELECT r.id, t.is_sensitive, o.force_template,
       c.last_inbound_at > now() - interval '24 hours' AS in_window,
       c.opted_out_at IS NOT NULL AS opted_out,
       CASE WHEN c.unreachable_at IS NOT NULL THEN c.unreachable_code END AS unreachable_code
FROM unnest($1::bigint[], $2::text[]) AS r(id, phone)
JOIN sla_daemon.outbox o ON o.id = r.id
LEFT JOIN public.tickets t ON t.id = o.ticket_id
LEFT JOIN sla_daemon.contacts c ON c.phone = r.phone;

-- name: record_delivery
SELECT changed, language, requeued
FROM sla_daemon.record_delivery($1::text, $2::text, $3::integer, $4::bigint, $5::text);

-- name: record_inbound
SELECT sla_daemon.record_inbound($1::text, $2::text, $3::text, $4::text) AS recorded;

-- name: record_reply
-- Issue 13: a reply; "not fixed" ($4) reopens the ticket with $5, else is recorded.
SELECT recorded, reply_ticket, reply_action
FROM sla_daemon.record_reply($1::text, $2::text, $3::text, $4::boolean, $5::boolean);

-- name: reconcile_candidates
-- Issue 13: sent messages with no final delivery state ($1 seconds after they were
-- sent, and not looked up in the last $1 seconds), sent less than $2 seconds ago,
-- oldest first, at most $3.
SELECT o.id, o.message_sid
FROM sla_daemon.outbox o
LEFT JOIN sla_daemon.deliveries d ON d.message_sid = o.message_sid
WHERE o.state = 'sent' AND o.message_sid IS NOT NULL
  AND o.finished_at < now() - $1::float8 * interval '1 second'
  AND o.finished_at > now() - $2::float8 * interval '1 second'
  AND (d.message_sid IS NULL
       OR (sla_daemon.delivery_rank(d.status) < 3
           AND (d.checked_at IS NULL OR d.checked_at < now() - $1::float8 * interval '1 second')))
ORDER BY o.finished_at, o.id
LIMIT $3::integer;

-- name: record_lookup
SELECT changed, language, requeued
FROM sla_daemon.record_lookup($1::text, $2::text, $3::integer, $4::bigint, $5::text);

-- name: purge_deliveries
-- Issue 13: delivery states and callbacks past the outbox retention (each number's
-- newest stays), through a function of the schema's owner.
SELECT sla_daemon.purge_deliveries($1::float8, $2::integer) AS deleted;

-- name: purge_inbound
-- Issue 13: citizens' messages past the event retention, and numbers with nothing
-- left to remember (opt-outs stay), through a function of the schema's owner.
SELECT sla_daemon.purge_inbound($1::float8, $2::integer) AS deleted;

-- name: report_deliveries
-- Issue 13: what Twilio's callbacks said about messages first reported in the period,
-- per language. delivered counts delivered or read (read implies delivered).
SELECT coalesce(d.language, 'unknown') AS language, count(*) AS reported,
       count(*) FILTER (WHERE d.status IN ('delivered', 'read')) AS delivered,
       count(*) FILTER (WHERE d.status = 'read') AS read,
       count(*) FILTER (WHERE d.status IN ('failed', 'undelivered')) AS failed
FROM sla_daemon.deliveries d
WHERE d.created_at >= now() - $1::interval
GROUP BY 1
ORDER BY 1;

-- name: report_failing_numbers
-- Numbers with at least two failed messages in the period, worst first (masked in
-- Python before they are shown).
SELECT d.phone, count(*) AS failures,
       (array_agg(d.error_code ORDER BY d.updated_at DESC))[1] AS last_error_code
FROM sla_daemon.deliveries d
WHERE d.created_at >= now() - $1::interval AND d.phone IS NOT NULL
  AND d.status IN ('failed', 'undelivered')
GROUP BY d.phone
HAVING count(*) >= 2
ORDER BY count(*) DESC, d.phone
LIMIT 20;
-- name: dead_ids
-- Which of the given outbox ids are dead letters (retry-dead refuses the others).
SELECT id FROM sla_daemon.outbox WHERE id = ANY($1::bigint[]) AND state = 'dead';

-- name: check_privileges
-- What the connecting role lacks of what the daemon does: every privilege
-- sla_daemon_runtime holds (migration 0006 and later ones grant them), and the core
-- that 0006 grants it (so a privilege revoked from the runtime role itself shows too).
-- Objects go by OID: checking by name would need USAGE on their schema first.
-- One row per missing privilege: kind (schema, table, column, sequence, function),
-- object, column (for kind column), privilege, and whether the runtime role has it.
WITH runtime AS (
    SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'sla_daemon_runtime'
), held AS (
    SELECT 'schema' AS kind, n.oid, NULL::text AS col, a.privilege_type AS privilege
    FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a, runtime r
    WHERE a.grantee = r.oid
    UNION
    SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, c.oid, NULL,
           a.privilege_type
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a, runtime r
    WHERE a.grantee = r.oid
    UNION
    SELECT 'column', att.attrelid, att.attname::text, a.privilege_type
    FROM pg_catalog.pg_attribute att
    CROSS JOIN LATERAL pg_catalog.aclexplode(att.attacl) a
    CROSS JOIN runtime r
    WHERE a.grantee = r.oid AND NOT att.attisdropped
    UNION
    SELECT 'function', p.oid, NULL, a.privilege_type
    FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a, runtime r
    WHERE a.grantee = r.oid
), core (kind, nsp, rel, col, privilege) AS (
    VALUES ('schema', 'public', NULL, NULL, 'USAGE'),
           ('schema', 'sla_daemon', NULL, NULL, 'USAGE'),
           ('column', 'public', 'tickets', 'status', 'UPDATE'),
           ('column', 'public', 'tickets', 'escalated_at', 'UPDATE'),
           ('column', 'public', 'tickets', 'escalation_reason', 'UPDATE'),
           ('column', 'public', 'tickets', 'assigned_to', 'UPDATE'),
           ('column', 'public', 'tickets', 'status', 'SELECT'),
           ('column', 'public', 'tickets', 'sla_resolution_deadline', 'SELECT'),
           ('column', 'public', 'ticket_assignments', 'ticket_id', 'INSERT'),
           ('column', 'public', 'ticket_assignments', 'is_active', 'UPDATE'),
           ('column', 'public', 'users', 'phone', 'SELECT'),
           ('table', 'sla_daemon', 'outbox', NULL, 'UPDATE'),
           ('table', 'sla_daemon', 'events', NULL, 'INSERT'),
           ('table', 'sla_daemon', 'deadlines', NULL, 'SELECT'),
           ('table', 'sla_daemon', 'wakeups', NULL, 'UPDATE'),
           ('table', 'sla_daemon', 'schema_migrations', NULL, 'SELECT')
), wanted AS (
    SELECT * FROM held
    UNION
    SELECT k.kind, coalesce(c.oid, n.oid), k.col, k.privilege
    FROM core k
    JOIN pg_catalog.pg_namespace n ON n.nspname = k.nsp
    LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = k.rel
    WHERE k.rel IS NULL OR c.oid IS NOT NULL
), checked AS (
    SELECT w.*,
           CASE w.kind
               WHEN 'schema' THEN pg_catalog.has_schema_privilege(w.oid, w.privilege)
               WHEN 'table' THEN pg_catalog.has_table_privilege(w.oid, w.privilege)
               WHEN 'sequence' THEN pg_catalog.has_sequence_privilege(w.oid, w.privilege)
               WHEN 'column' THEN pg_catalog.has_column_privilege(w.oid, w.col, w.privilege)
               WHEN 'function' THEN pg_catalog.has_function_privilege(w.oid, w.privilege)
           END AS mine,
           (w.kind, w.oid, w.col, w.privilege) IN (SELECT * FROM held) AS runtime_has
    FROM wanted w
)
SELECT kind,
       CASE kind
           WHEN 'schema' THEN w.oid::pg_catalog.regnamespace::text
           WHEN 'function' THEN w.oid::pg_catalog.regprocedure::text
           ELSE w.oid::pg_catalog.regclass::text
       END AS object,
       col, privilege, runtime_has,
       pg_catalog.pg_has_role(current_user, 'sla_daemon_runtime', 'USAGE') AS member
FROM checked w
WHERE NOT mine
ORDER BY kind, object, col, privilege;

-- name: runtime_role_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sla_daemon_runtime');

-- name: unadopted_count
-- Live tickets without deadlines (from before sla-daemon was installed): `sla-daemon adopt`.
SELECT sla_daemon.unadopted_count();

-- name: adopt_tickets
-- One batch of adoption ($1 tickets at most; $2 true: escalate the breached ones).
SELECT adopted, breached FROM sla_daemon.adopt_tickets($1::integer, $2::boolean);
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
SELECT outcome, level, assigned_to, tracking_number, overdue_hours, staff_alert
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
