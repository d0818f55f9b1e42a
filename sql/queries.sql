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

-- name: record_warnings
SELECT ticket_id, tracking_number, deadline_kind, deadline, warn_at
FROM sla_daemon.record_warnings($1::integer);

-- name: escalate_ticket
SELECT escalated, outcome, breach_type, manager_id, tracking_number
FROM sla_daemon.escalate_ticket($1::uuid, $2::text);

-- name: next_event_at
SELECT sla_daemon.next_event_at() AS next_at, now() AS db_now;

-- name: timer_awake
UPDATE sla_daemon.wakeups SET wake_at = 'infinity' WHERE name = 'timer';

-- name: set_timer_wake
UPDATE sla_daemon.wakeups SET wake_at = $1::timestamptz WHERE name = 'timer';

-- name: claim_outbox
SELECT id, ticket_id, kind, old_status, new_status, attempts, created_at, tracking_number,
       phone, language
FROM sla_daemon.claim_outbox($1::text, $2::integer, $3::float8);

-- name: finish_outbox
SELECT sla_daemon.finish_outbox($1::text, $2::bigint[], $3::text[], $4::text[], $5::integer[],
                                $6::text[], $7::float8[], $8::text[]);

-- name: outbox_sleep
SELECT sla_daemon.outbox_sleep();

-- name: requeue_dead
SELECT sla_daemon.requeue_dead($1::bigint[]);

-- name: outbox_backlog
SELECT count(*) FILTER (WHERE state IN ('pending', 'sending')) AS backlog,
       count(*) FILTER (WHERE state = 'dead') AS dead
FROM sla_daemon.outbox
WHERE state IN ('pending', 'sending', 'dead');

-- name: health
SELECT 1;
