-- Adopting tickets that existed before sla-daemon was installed: live tickets (open or
-- in progress, not sensitive) without deadlines get them from their configs, counted
-- from their creation, through the same triggers as new tickets (so they are
-- scheduled and warned like new ones). Run by `sla-daemon adopt`, in batches, as the
-- migration role (writing deadlines is the owner's right, not the daemon's): nothing
-- here is granted to sla_daemon_runtime.

-- A breach recorded at adoption without escalating.
ALTER TABLE sla_daemon.events DROP CONSTRAINT events_kind_check;
ALTER TABLE sla_daemon.events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('warning', 'escalation', 'adopted_breached'));

-- Live tickets without deadlines (`migrate` reports them).
CREATE FUNCTION sla_daemon.unadopted_count() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM public.tickets t
    WHERE t.status IN ('open', 'in_progress') AND t.is_sensitive IS FALSE
      AND t.sla_response_deadline IS NULL AND t.sla_resolution_deadline IS NULL
$$;

-- One batch of at most p_limit tickets, locked with SKIP LOCKED (a ticket a writer
-- holds comes in a later batch). p_escalate false: a deadline already missed is
-- recorded as an 'adopted_breached' event and left out of the schedule (its later
-- deadline, if any, stays); true: it is escalated by the daemon's next pass.
CREATE FUNCTION sla_daemon.adopt_tickets(p_limit integer, p_escalate boolean)
RETURNS TABLE (adopted integer, breached integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ids uuid[];
    v_breached uuid[];
BEGIN
    SELECT array_agg(t.id) INTO v_ids FROM (
        SELECT t.id FROM public.tickets t
        WHERE t.status IN ('open', 'in_progress') AND t.is_sensitive IS FALSE
          AND t.sla_response_deadline IS NULL AND t.sla_resolution_deadline IS NULL
        ORDER BY t.created_at, t.id
        LIMIT greatest(p_limit, 1)
        FOR UPDATE SKIP LOCKED
    ) t;
    IF v_ids IS NULL THEN
        RETURN QUERY SELECT 0, 0;
        RETURN;
    END IF;
    -- The deadlines trigger schedules them (deadlines, warnings) and wakes the timer.
    UPDATE public.tickets t
    SET sla_response_deadline = d.response_deadline,
        sla_resolution_deadline = d.resolution_deadline
    FROM public.tickets src
    CROSS JOIN LATERAL sla_daemon.compute_deadlines(src.tenant_id, src.category,
                                                    src.created_at, false) d
    WHERE t.id = src.id AND src.id = ANY (v_ids);
    SELECT array_agg(t.id) INTO v_breached
    FROM public.tickets t
    WHERE t.id = ANY (v_ids)
      AND sla_daemon.breach_type(t.status::text, t.is_sensitive, t.sla_response_deadline,
                                 t.sla_resolution_deadline, now()) IS NOT NULL;
    IF NOT p_escalate AND v_breached IS NOT NULL THEN
        DELETE FROM sla_daemon.deadlines d
        WHERE d.ticket_id = ANY (v_breached) AND d.due_at <= now();
        DELETE FROM sla_daemon.warnings w
        WHERE w.ticket_id = ANY (v_breached) AND w.deadline <= now();
        INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, details)
        SELECT t.id, 'adopted_breached', b.kind,
               CASE b.kind WHEN 'response' THEN t.sla_response_deadline
                           ELSE t.sla_resolution_deadline END,
               pg_catalog.jsonb_build_object('adopted_at', now())
        FROM public.tickets t
        CROSS JOIN LATERAL (SELECT sla_daemon.breach_type(
            t.status::text, t.is_sensitive, t.sla_response_deadline,
            t.sla_resolution_deadline, now()) AS kind) b
        WHERE t.id = ANY (v_breached);
    END IF;
    RETURN QUERY SELECT pg_catalog.cardinality(v_ids),
                        coalesce(pg_catalog.cardinality(v_breached), 0);
END
$$;

REVOKE EXECUTE ON FUNCTION sla_daemon.unadopted_count(), sla_daemon.adopt_tickets(integer, boolean)
    FROM PUBLIC;
