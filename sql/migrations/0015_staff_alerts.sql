-- Staff alerts (issue 12, item 6): the person a ticket is escalated to gets a WhatsApp
-- message of their own (tracking number, category, how overdue, level), and with
-- SLA_DAEMON_WARN_TEAM_MANAGER the team manager gets each warning, through the outbox
-- like any other message.
--
-- * The outbox holds one stream per (ticket, recipient): recipient_id NULL is the
--   ticket's citizen (as before), otherwise the staff member (public.users). The
--   per-ticket rules become per (ticket, recipient): only the newest row of a stream
--   is sent, never while another row of the same stream is in flight, retry-dead
--   re-queues a row only while it is its stream's newest. A staff alert neither
--   supersedes nor is superseded by the citizen's messages or another person's.
-- * Staff rows are written by the daemon's own functions (escalate_ticket at level 1,
--   escalate_levels for the further levels, record_warnings when asked), in the same
--   transaction, straight into the outbox (the intake is the writers' and carries
--   citizen rows only), with ids from the intake's identity sequence, so every row of
--   the outbox is in one order. The writers' status trigger is not touched.
-- * No phone (or no such user): no row, the escalation goes on, and the reason is
--   returned (the daemon logs it) and kept in the escalation event's details.
-- * The newest-per-stream look-ups stay on the index outbox_ticket (ticket_id, id),
--   the recipient a filter on a ticket's few rows.

ALTER DOMAIN sla_daemon.outbox_kind DROP CONSTRAINT outbox_kind_check;
ALTER DOMAIN sla_daemon.outbox_kind ADD CONSTRAINT outbox_kind_check
    CHECK (VALUE IN ('status', 'escalation', 'staff_escalation', 'staff_warning'));

-- recipient_id: NULL for the citizen; level: the escalation level of a staff
-- escalation alert; deadline_at: the deadline missed (escalation) or warned of.
ALTER TABLE sla_daemon.outbox
    ADD COLUMN recipient_id uuid,
    ADD COLUMN level smallint,
    ADD COLUMN deadline_at timestamptz;
-- The report's staff alerts (few among the citizens' messages).
CREATE INDEX outbox_staff ON sla_daemon.outbox (created_at) WHERE recipient_id IS NOT NULL;

-- Every message, whether still in the intake or in the outbox (as 0003, with the
-- recipient and what a staff alert says).
CREATE OR REPLACE VIEW sla_daemon.messages AS
    SELECT o.id, o.ticket_id, o.kind::text AS kind, o.old_status, o.new_status, o.created_at,
           o.state::text AS state, o.attempts, o.finished_at, o.language, o.message_sid,
           o.error_code, o.last_error, o.recipient_id, o.level, o.deadline_at
    FROM sla_daemon.outbox o
    UNION ALL
    SELECT i.id, i.ticket_id, i.kind, i.old_status, i.new_status, i.created_at,
           'pending', 0, NULL, NULL, NULL, NULL, NULL, NULL::uuid, NULL::smallint,
           NULL::timestamptz
    FROM sla_daemon.outbox_intake i;

-- Queue one staff alert about p_ticket_id for p_recipient, in the caller's transaction,
-- and wake a sleeping sender. Returns what became of it: 'queued'; 'no_recipient' (no
-- one to alert), 'no_user' (no such user), 'no_phone' (the user has no phone number),
-- 'sensitive' (a sensitive ticket: no automated message names it), 'moot' (no such
-- ticket, or a warning about a ticket no longer open or in progress).
CREATE FUNCTION sla_daemon.enqueue_staff_alert(p_ticket_id uuid, p_recipient uuid,
                                               p_kind text, p_level smallint,
                                               p_deadline timestamptz)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    v_phone text;
BEGIN
    IF p_recipient IS NULL THEN
        RETURN 'no_recipient';
    END IF;
    SELECT tk.status::text AS status, tk.is_sensitive INTO t
    FROM public.tickets tk WHERE tk.id = p_ticket_id;
    IF NOT FOUND OR (p_kind = 'staff_warning' AND t.status NOT IN ('open', 'in_progress')) THEN
        RETURN 'moot';
    END IF;
    IF t.is_sensitive IS NOT FALSE THEN
        RETURN 'sensitive';
    END IF;
    SELECT u.phone INTO v_phone FROM public.users u WHERE u.id = p_recipient;
    IF NOT FOUND THEN
        RETURN 'no_user';
    END IF;
    IF nullif(btrim(v_phone), '') IS NULL THEN
        RETURN 'no_phone';
    END IF;
    INSERT INTO sla_daemon.outbox (id, ticket_id, kind, new_status, recipient_id, level,
                                   deadline_at, next_attempt_at)
    VALUES (nextval('sla_daemon.outbox_intake_id_seq'::regclass), p_ticket_id, p_kind,
            t.status, p_recipient, p_level, p_deadline, now());
    -- The sender's wake-up, as the status trigger does it: nothing while a daemon is awake.
    IF pg_try_advisory_xact_lock(5459011, 1) THEN
        IF (SELECT w.sleeping FROM sla_daemon.wakeups w WHERE w.name = 'outbox') THEN
            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
            PERFORM pg_notify('sla_daemon_outbox', '');
        END IF;
    END IF;
    RETURN 'queued';
END
$$;

-- Level 1, as 0007, and the team manager's staff alert (level 1, the missed deadline);
-- staff_alert says what became of it (NULL: no manager to alert).
DROP FUNCTION sla_daemon.escalate_ticket(uuid, text);
CREATE FUNCTION sla_daemon.escalate_ticket(p_ticket_id uuid, p_reason text DEFAULT NULL)
RETURNS TABLE (escalated boolean, outcome text, breach_type text, manager_id uuid,
               tracking_number text, staff_alert text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    t record;
    v_breach text;
    v_manager uuid;
    v_reason text;
    v_deadline timestamptz;
    v_cycle integer;
    v_alert text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN
        RETURN QUERY SELECT false, 'locked', NULL::text, NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT tk.id, tk.tenant_id, tk.category, tk.created_at, tk.status::text AS status,
           tk.is_sensitive, tk.sla_response_deadline, tk.sla_resolution_deadline,
           tk.assigned_team_id, tk.assigned_to, tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.id = p_ticket_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'not_found', NULL::text, NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;
    v_breach := sla_daemon.breach_type(t.status, t.is_sensitive, t.sla_response_deadline,
                                       t.sla_resolution_deadline, now());
    IF v_breach IS NULL THEN
        RETURN QUERY SELECT false, 'not_breached', NULL::text, NULL::uuid, t.tracking_number,
                            NULL::text;
        RETURN;
    END IF;
    v_deadline := CASE v_breach WHEN 'response' THEN t.sla_response_deadline
                                ELSE t.sla_resolution_deadline END;
    v_cycle := (sla_daemon.current_cycle(p_ticket_id, t.created_at)).cycle;
    SELECT tm.manager_id INTO v_manager FROM public.teams tm WHERE tm.id = t.assigned_team_id;
    v_reason := coalesce(p_reason, format('SLA %s deadline missed', v_breach));
    INSERT INTO sla_daemon.escalation_marks (ticket_id) VALUES (p_ticket_id)
    ON CONFLICT DO NOTHING;
    PERFORM set_config('sla_daemon.escalating', 'on', true);
    UPDATE public.tickets tk
    SET status = 'escalated', escalated_at = now(), escalation_reason = v_reason,
        assigned_to = coalesce(v_manager, tk.assigned_to)
    WHERE tk.id = p_ticket_id;
    PERFORM set_config('sla_daemon.escalating', '', true);
    DELETE FROM sla_daemon.escalation_marks m WHERE m.ticket_id = p_ticket_id;
    UPDATE public.ticket_assignments a SET is_active = false
    WHERE a.ticket_id = p_ticket_id AND a.is_active;
    INSERT INTO public.ticket_assignments (ticket_id, assigned_to, assigned_team_id, reason,
                                           is_active, created_at)
    VALUES (p_ticket_id, coalesce(v_manager, t.assigned_to), t.assigned_team_id, 'escalation',
            true, now());
    DELETE FROM sla_daemon.deadlines d WHERE d.ticket_id = p_ticket_id;
    DELETE FROM sla_daemon.warnings w WHERE w.ticket_id = p_ticket_id;
    IF v_manager IS NOT NULL THEN
        v_alert := sla_daemon.enqueue_staff_alert(p_ticket_id, v_manager, 'staff_escalation',
                                                  1::smallint, v_deadline);
    END IF;
    INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, level, cycle, details)
    VALUES (p_ticket_id, 'escalation', v_breach, v_deadline, 1, v_cycle,
            jsonb_build_object('reason', v_reason, 'manager_id', v_manager,
                               'assigned_to', coalesce(v_manager, t.assigned_to),
                               'previous_assignee', t.assigned_to,
                               'previous_status', t.status,
                               'staff_alert', v_alert))
    ON CONFLICT DO NOTHING;
    PERFORM sla_daemon.schedule_next_level(p_ticket_id, t.tenant_id, t.category, v_cycle,
                                           1::smallint, v_deadline);
    RETURN QUERY SELECT true,
        CASE WHEN v_manager IS NULL THEN 'escalated_without_manager' ELSE 'escalated' END,
        v_breach, v_manager, t.tracking_number, v_alert;
END
$$;

-- As 0006, passing on each ticket's staff_alert.
DROP FUNCTION sla_daemon.escalate_tickets(uuid[], text[]);
CREATE FUNCTION sla_daemon.escalate_tickets(p_ticket_ids uuid[], p_reasons text[])
RETURNS TABLE (ticket_id uuid, escalated boolean, outcome text, breach_type text,
               manager_id uuid, tracking_number text, error text, retry_at timestamptz,
               staff_alert text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i integer;
    r record;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ticket_ids, 1), 0) LOOP
        ticket_id := p_ticket_ids[i];
        error := NULL;
        retry_at := NULL;
        BEGIN
            SELECT * INTO r FROM sla_daemon.escalate_ticket(p_ticket_ids[i], p_reasons[i]);
            escalated := r.escalated;
            outcome := r.outcome;
            breach_type := r.breach_type;
            manager_id := r.manager_id;
            tracking_number := r.tracking_number;
            staff_alert := r.staff_alert;
        EXCEPTION WHEN OTHERS THEN
            escalated := false;
            outcome := CASE SQLSTATE WHEN '55P03' THEN 'lock_timeout' ELSE 'failed' END;
            breach_type := NULL;
            manager_id := NULL;
            tracking_number := NULL;
            staff_alert := NULL;
            error := format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE);
        END;
        IF outcome = 'locked' THEN
            error := 'escalation lock held by '
                     || coalesce(sla_daemon.escalation_lock_holder(ticket_id), 'another session');
        END IF;
        IF error IS NOT NULL THEN
            retry_at := sla_daemon.escalation_failed(ticket_id, error);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Levels 2.., as 0007, each with a staff alert to the person it assigns the ticket to
-- (that level, the missed deadline); staff_alert says what became of it.
DROP FUNCTION sla_daemon.escalate_levels(uuid);
CREATE FUNCTION sla_daemon.escalate_levels(p_ticket_id uuid)
RETURNS TABLE (outcome text, level smallint, assigned_to uuid, tracking_number text,
               overdue_hours double precision, staff_alert text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    t record;
    s record;
    v_person uuid;
    v_alert text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN
        RETURN QUERY SELECT 'locked', NULL::smallint, NULL::uuid, NULL::text, NULL::float8,
                            NULL::text;
        RETURN;
    END IF;
    SELECT tk.id, tk.tenant_id, tk.category, tk.created_at, tk.status::text AS status,
           tk.assigned_team_id, tk.assigned_to, tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.id = p_ticket_id FOR UPDATE;
    LOOP
        SELECT * INTO s FROM sla_daemon.level_schedule ls
        WHERE ls.ticket_id = p_ticket_id FOR UPDATE;
        EXIT WHEN NOT FOUND OR s.due_at > now();
        IF t.id IS NULL OR t.status <> 'escalated'
           OR (sla_daemon.current_cycle(p_ticket_id, t.created_at)).cycle <> s.cycle THEN
            DELETE FROM sla_daemon.level_schedule ls WHERE ls.ticket_id = p_ticket_id;
            RETURN QUERY SELECT 'moot', s.level, NULL::uuid, t.tracking_number, NULL::float8,
                                NULL::text;
            RETURN;
        END IF;
        SELECT l.assign_to INTO v_person FROM sla_daemon.escalation_levels l
        WHERE l.municipality_id = t.tenant_id AND l.category IN ('', lower(t.category))
          AND l.level = s.level
        ORDER BY l.category DESC LIMIT 1;
        -- once per cycle: the event is unique per ticket, cycle and level
        IF v_person IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM sla_daemon.events e
                           WHERE e.ticket_id = p_ticket_id AND e.kind = 'escalation'
                             AND e.cycle = s.cycle AND e.level = s.level) THEN
            v_alert := sla_daemon.enqueue_staff_alert(p_ticket_id, v_person, 'staff_escalation',
                                                      s.level, s.base_deadline);
            INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, level,
                                           cycle, details)
            VALUES (p_ticket_id, 'escalation', NULL, s.base_deadline, s.level, s.cycle,
                    jsonb_build_object('assigned_to', v_person, 'previous_assignee',
                                       t.assigned_to, 'due_at', s.due_at,
                                       'staff_alert', v_alert))
            ON CONFLICT DO NOTHING;
            UPDATE public.tickets tk SET assigned_to = v_person WHERE tk.id = p_ticket_id;
            UPDATE public.ticket_assignments a SET is_active = false
            WHERE a.ticket_id = p_ticket_id AND a.is_active;
            INSERT INTO public.ticket_assignments (ticket_id, assigned_to, assigned_team_id,
                                                   reason, is_active, created_at)
            VALUES (p_ticket_id, v_person, t.assigned_team_id,
                    format('escalation level %s', s.level), true, now());
            t.assigned_to := v_person;
            RETURN QUERY SELECT 'escalated', s.level, v_person, t.tracking_number,
                extract(epoch FROM now() - s.base_deadline)::double precision / 3600, v_alert;
        END IF;
        PERFORM sla_daemon.schedule_next_level(p_ticket_id, t.tenant_id, t.category, s.cycle,
                                               s.level, s.base_deadline);
    END LOOP;
END
$$;

-- Warnings, as 0006; with p_team_manager each warning recorded also queues a staff
-- alert to the ticket's team manager (the deadline warned of); staff_alert says what
-- became of it (NULL: not asked).
DROP FUNCTION sla_daemon.record_warnings(integer);
CREATE FUNCTION sla_daemon.record_warnings(p_limit integer DEFAULT 1000,
                                           p_team_manager boolean DEFAULT false)
RETURNS TABLE (ticket_id uuid, tracking_number text, deadline_kind text,
               deadline timestamptz, warn_at timestamptz, staff_alert text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_count integer := 0;
    r record;
BEGIN
    FOR r IN
        WITH due AS (
            SELECT d.* FROM sla_daemon.due_warnings d ORDER BY d.warn_at LIMIT p_limit
        ), ev AS (
            INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, details)
            SELECT d.ticket_id, 'warning', d.deadline_kind, d.deadline,
                   jsonb_build_object('tracking_number', d.tracking_number, 'warn_at', d.warn_at)
            FROM due d
            ON CONFLICT DO NOTHING
            RETURNING ticket_id, deadline_kind
        )
        SELECT d.* FROM due d JOIN ev USING (ticket_id, deadline_kind)
    LOOP
        v_count := v_count + 1;
        ticket_id := r.ticket_id;
        tracking_number := r.tracking_number;
        deadline_kind := r.deadline_kind;
        deadline := r.deadline;
        warn_at := r.warn_at;
        staff_alert := NULL;
        IF p_team_manager THEN
            staff_alert := sla_daemon.enqueue_staff_alert(
                r.ticket_id,
                (SELECT tm.manager_id FROM public.tickets tk
                 JOIN public.teams tm ON tm.id = tk.assigned_team_id
                 WHERE tk.id = r.ticket_id),
                'staff_warning', NULL::smallint, r.deadline);
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_count > 0 THEN
        PERFORM pg_notify('sla_daemon_warning', '');
    END IF;
    DELETE FROM sla_daemon.warnings w
    WHERE w.warn_at <= now()
      AND (NOT EXISTS (SELECT 1 FROM sla_daemon.due_warnings d
                       WHERE d.ticket_id = w.ticket_id AND d.deadline_kind = w.deadline_kind)
           OR EXISTS (SELECT 1 FROM sla_daemon.events e
                      WHERE e.kind = 'warning' AND e.ticket_id = w.ticket_id
                        AND e.deadline_kind = w.deadline_kind AND e.deadline = w.deadline));
END
$$;

-- Claim up to p_limit due rows (as 0014: serialised by a row lock on sla_daemon.locks;
-- bad intake rows quarantined; each cycle's first response and resolution recorded;
-- busy streams skipped before the LIMIT; older due rows superseded; every claim has a
-- fresh token), per (ticket, recipient): only a stream's newest row is sent, never
-- while another row of that stream is in flight. A citizen's row comes with the
-- citizen's phone and language, as before; a staff row with the staff member's, and
-- what its text needs (category, level, the deadline and its calendar's time zone).
DROP FUNCTION sla_daemon.claim_outbox(text, integer, double precision);
CREATE FUNCTION sla_daemon.claim_outbox(p_worker text, p_limit integer,
                                        p_lease_seconds double precision)
RETURNS TABLE (id bigint, claim_token bigint, ticket_id uuid, kind text, old_status text,
               new_status text, attempts integer, created_at timestamptz,
               tracking_number text, phone text, language text, recipient_id uuid,
               category text, level smallint, deadline_at timestamptz, time_zone text)
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
        SELECT o.id, o.ticket_id, o.recipient_id
        FROM sla_daemon.outbox o
        WHERE o.state IN ('pending', 'sending') AND o.next_attempt_at <= now()
          AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox s
                          WHERE s.ticket_id = o.ticket_id AND s.id <> o.id
                            AND s.recipient_id IS NOT DISTINCT FROM o.recipient_id
                            AND s.state = 'sending' AND s.next_attempt_at > now())
        ORDER BY o.next_attempt_at, o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), judged AS (
        SELECT c.id, c.ticket_id,
               (SELECT max(n.id) FROM sla_daemon.outbox n
                WHERE n.ticket_id = c.ticket_id
                  AND n.recipient_id IS NOT DISTINCT FROM c.recipient_id) AS newest
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
        RETURNING o.id, o.ticket_id, o.kind, o.old_status, o.new_status, o.attempts, o.created_at,
                  o.recipient_id, o.level, o.deadline_at
    )
    SELECT c.id, v_token, c.ticket_id, c.kind::text, c.old_status, c.new_status, c.attempts,
           c.created_at, t.tracking_number, u.phone, u.preferred_language, c.recipient_id,
           t.category, c.level, c.deadline_at,
           CASE WHEN c.recipient_id IS NOT NULL AND t.id IS NOT NULL THEN
               coalesce((SELECT k.time_zone FROM sla_daemon.calendars k
                         WHERE k.id = sla_daemon.calendar_for(t.tenant_id, t.category)),
                        'Africa/Johannesburg')
           END
    FROM claimed c
    LEFT JOIN public.tickets t ON t.id = c.ticket_id
    LEFT JOIN public.users u ON u.id = coalesce(c.recipient_id, t.user_id)
    ORDER BY c.id;
END
$$;

-- Before a queued row is POSTed (as 0006): extend its lease, only while this claim still
-- holds it and it is still its stream's newest row (for the citizen's stream, also
-- against the intake, which holds only citizen rows).
CREATE OR REPLACE FUNCTION sla_daemon.extend_outbox(p_token bigint, p_ids bigint[],
                                                    p_lease_seconds double precision)
RETURNS SETOF bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE sla_daemon.outbox o
    SET next_attempt_at = now() + p_lease_seconds * interval '1 second'
    WHERE o.id = ANY (p_ids) AND o.claim_token = p_token AND o.state = 'sending'
      AND o.next_attempt_at > now()
      AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox n
                      WHERE n.ticket_id = o.ticket_id AND n.id > o.id
                        AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id)
      AND (o.recipient_id IS NOT NULL
           OR NOT EXISTS (SELECT 1 FROM sla_daemon.outbox_intake i
                          WHERE i.ticket_id = o.ticket_id AND i.id > o.id))
    RETURNING o.id
$$;

-- Re-queue dead rows (as 0006); a row that is no longer its stream's newest ends
-- superseded instead. Returns the rows re-queued.
CREATE OR REPLACE FUNCTION sla_daemon.requeue_dead(p_ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    WITH dead AS (
        SELECT o.id,
               greatest((SELECT max(n.id) FROM sla_daemon.outbox n
                         WHERE n.ticket_id = o.ticket_id
                           AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id),
                        (SELECT max(i.id) FROM sla_daemon.outbox_intake i
                         WHERE i.ticket_id = o.ticket_id AND o.recipient_id IS NULL)) AS newest
        FROM sla_daemon.outbox o
        WHERE o.state = 'dead' AND (p_ids IS NULL OR o.id = ANY (p_ids))
        FOR UPDATE OF o
    ), superseded AS (
        UPDATE sla_daemon.outbox o
        SET state = 'superseded', superseded_by = d.newest, finished_at = now()
        FROM dead d WHERE o.id = d.id AND d.newest > d.id
        RETURNING o.id
    ), requeued AS (
        UPDATE sla_daemon.outbox o
        SET state = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL,
            locked_by = NULL, claim_token = NULL
        FROM dead d WHERE o.id = d.id AND d.newest <= d.id
        RETURNING o.id
    )
    SELECT count(*) INTO v_count FROM requeued;
    IF v_count > 0 THEN
        UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
        PERFORM pg_notify('sla_daemon_outbox', '');
    END IF;
    RETURN v_count;
END
$$;

REVOKE EXECUTE ON FUNCTION
    sla_daemon.enqueue_staff_alert(uuid, uuid, text, smallint, timestamptz),
    sla_daemon.escalate_ticket(uuid, text),
    sla_daemon.escalate_tickets(uuid[], text[]),
    sla_daemon.escalate_levels(uuid),
    sla_daemon.record_warnings(integer, boolean),
    sla_daemon.claim_outbox(text, integer, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    sla_daemon.enqueue_staff_alert(uuid, uuid, text, smallint, timestamptz),
    sla_daemon.escalate_ticket(uuid, text),
    sla_daemon.escalate_tickets(uuid[], text[]),
    sla_daemon.escalate_levels(uuid),
    sla_daemon.record_warnings(integer, boolean),
    sla_daemon.claim_outbox(text, integer, double precision)
    TO sla_daemon_runtime;
-- Staff rows take their ids from the intake's sequence (one order for the outbox).
GRANT USAGE ON SEQUENCE sla_daemon.outbox_intake_id_seq TO sla_daemon_runtime;
