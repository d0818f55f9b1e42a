-- Reporting in business time (issue 12, item 7): each SLA cycle's first response and
-- resolution, recorded where the daemon already sees every status change.
--
-- The status trigger (the writers' hot path, measured) gets no new write: claim_outbox,
-- which moves every committed status change from the intake into the outbox, also
-- upserts, in the same statement, one row per (ticket, cycle) into
-- sla_daemon.cycle_outcomes. The outbox itself cannot serve the report: retention
-- purges sent and superseded rows (only each ticket's newest stays), so a month's
-- report would lose its first responses; one small row per cycle is kept instead.
--
-- * A change belongs to the last cycle started by its time (cycle 1 starts at creation;
--   sla_daemon.cycles holds the others).
-- * First response: the cycle's first change to a status other than open, made by staff
--   (the daemon's own escalation is not a response). A cycle that starts in_progress (a
--   reopen straight into work) is responded to at its start.
-- * Resolution: the cycle's first change to resolved or closed.
-- * Both keep the earliest time seen (least), so a row claimed twice, or changes of one
--   cycle spread over several claims, record the same instants.

CREATE TABLE sla_daemon.cycle_outcomes (
    ticket_id         uuid NOT NULL,
    cycle             integer NOT NULL CHECK (cycle >= 1),
    first_response_at timestamptz,
    resolved_at       timestamptz,
    PRIMARY KEY (ticket_id, cycle)
);

-- Claim up to p_limit due rows (as 0006: serialised by a row lock on sla_daemon.locks;
-- bad intake rows quarantined; only a ticket's newest row is ever sent, never while
-- another row of that ticket is in flight; busy tickets skipped before the LIMIT; older
-- due rows superseded; every claim has a fresh token), and record each cycle's first
-- response and resolution from the changes taken in.
CREATE OR REPLACE FUNCTION sla_daemon.claim_outbox(p_worker text, p_limit integer,
                                        p_lease_seconds double precision)
RETURNS TABLE (id bigint, claim_token bigint, ticket_id uuid, kind text, old_status text,
               new_status text, attempts integer, created_at timestamptz,
               tracking_number text, phone text, language text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_token bigint;
BEGIN
    PERFORM 1 FROM sla_daemon.locks l WHERE l.name = 'claim' FOR UPDATE;
    v_token := nextval('sla_daemon.claim_tokens');
    -- Take in what writers committed (a TID scan of rows read in heap order). A row
    -- that cannot be sent is quarantined, never left to fail every claim.
    WITH moved AS (
        DELETE FROM sla_daemon.outbox_intake i
        WHERE i.ctid = ANY (ARRAY(SELECT x.ctid FROM sla_daemon.outbox_intake x LIMIT 10000))
        RETURNING i.id, i.ticket_id, i.kind, i.old_status, i.new_status, i.created_at,
                  i.kind IN ('status', 'escalation') AS valid
    ), queued AS (
        INSERT INTO sla_daemon.outbox (id, ticket_id, kind, old_status, new_status, created_at,
                                       next_attempt_at, state, finished_at, last_error)
        SELECT m.id, m.ticket_id, CASE WHEN m.valid THEN m.kind ELSE 'status' END,
               m.old_status, m.new_status, m.created_at, now(),
               CASE WHEN m.valid THEN 'pending' ELSE 'dead' END,
               CASE WHEN m.valid THEN NULL ELSE now() END,
               CASE WHEN m.valid THEN NULL
                    ELSE 'quarantined: unknown kind ' || quote_literal(left(m.kind, 40)) END
        FROM moved m ORDER BY m.id
        ON CONFLICT (id) DO NOTHING
    ), changes AS (
        -- each valid change in the cycle it happened in: the last one started by then
        SELECT m.ticket_id, m.created_at, m.new_status,
               m.kind = 'status' AND m.new_status <> 'open' AS responds,
               coalesce((SELECT max(c.cycle) FROM sla_daemon.cycles c
                         WHERE c.ticket_id = m.ticket_id AND c.started_at <= m.created_at),
                        1) AS cycle
        FROM moved m
        WHERE m.valid
    )
    INSERT INTO sla_daemon.cycle_outcomes AS o (ticket_id, cycle, first_response_at, resolved_at)
    SELECT g.ticket_id, g.cycle, min(g.created_at) FILTER (WHERE g.responds),
           min(g.created_at) FILTER (WHERE g.new_status IN ('resolved', 'closed'))
    FROM changes g
    GROUP BY g.ticket_id, g.cycle
    HAVING bool_or(g.responds OR g.new_status IN ('resolved', 'closed'))
    ON CONFLICT (ticket_id, cycle) DO UPDATE
    SET first_response_at = least(o.first_response_at, excluded.first_response_at),
        resolved_at = least(o.resolved_at, excluded.resolved_at);
    RETURN QUERY
    WITH cand AS (
        SELECT o.id, o.ticket_id
        FROM sla_daemon.outbox o
        WHERE o.state IN ('pending', 'sending') AND o.next_attempt_at <= now()
          AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox s
                          WHERE s.ticket_id = o.ticket_id AND s.id <> o.id
                            AND s.state = 'sending' AND s.next_attempt_at > now())
        ORDER BY o.next_attempt_at, o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), judged AS (
        SELECT c.id, c.ticket_id,
               (SELECT max(n.id) FROM sla_daemon.outbox n WHERE n.ticket_id = c.ticket_id) AS newest
        FROM cand c
    ), superseded AS (
        UPDATE sla_daemon.outbox o
        SET state = 'superseded', superseded_by = j.newest, finished_at = now(), locked_by = NULL,
            claim_token = NULL
        FROM judged j
        WHERE o.id = j.id AND j.id < j.newest
        RETURNING o.id
    ), claimed AS (
        UPDATE sla_daemon.outbox o
        SET state = 'sending', locked_by = p_worker, claim_token = v_token,
            attempts = o.attempts + 1,
            next_attempt_at = now() + p_lease_seconds * interval '1 second'
        FROM judged j
        WHERE o.id = j.id AND j.id = j.newest
        RETURNING o.id, o.ticket_id, o.kind, o.old_status, o.new_status, o.attempts, o.created_at
    )
    SELECT c.id, v_token, c.ticket_id, c.kind::text, c.old_status, c.new_status, c.attempts,
           c.created_at, t.tracking_number, u.phone, u.preferred_language
    FROM claimed c
    LEFT JOIN public.tickets t ON t.id = c.ticket_id
    LEFT JOIN public.users u ON u.id = t.user_id
    ORDER BY c.id;
END
$$;

GRANT SELECT, INSERT, UPDATE ON sla_daemon.cycle_outcomes TO sla_daemon_runtime;
REVOKE EXECUTE ON FUNCTION sla_daemon.claim_outbox(text, integer, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sla_daemon.claim_outbox(text, integer, double precision)
    TO sla_daemon_runtime;
