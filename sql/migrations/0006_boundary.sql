-- The database boundary (issue 9) and the promises under faults that live in SQL
-- (issue 10). sla-daemon shares its database with roles it does not control, so:
--
-- * Two NOLOGIN roles. sla_daemon_owner owns the schema and everything in it; the
--   trigger functions run as it (SECURITY DEFINER), so the platform's writers need no
--   grant at all on this schema and cannot touch its tables: the only way a writer
--   causes a message is a real status change of a real ticket. sla_daemon_runtime
--   holds exactly what the running daemon needs (column-level on the platform's
--   tables, no DELETE on the event log or the migration record); a login role is made
--   a member of it (README).
-- * Every function pins search_path to pg_catalog, pg_temp (pg_temp last: otherwise it
--   is searched first for types and tables), so no look-alike planted in public or
--   pg_temp is ever run. migrate and the daemon's connections pin theirs too.
-- * What the daemon serialises on, other roles cannot take: claims take a row lock on
--   a daemon-owned table (FOR UPDATE needs UPDATE on it), not an advisory lock that
--   any session may hold. The escalation's advisory lock stays, but a ticket whose lock
--   is held elsewhere, or whose row is locked longer than lock_timeout, is retried on
--   its own backoff and reported, delaying only that ticket.
-- * An escalation notice is marked by a row only the daemon can write, not by a
--   setting that any writer can SET.
-- * NOTIFY payloads carry no identifiers (warnings are read from sla_daemon.events).
-- * Claims carry a token: a finish whose token is not the row's current one changes
--   nothing. Busy tickets are skipped before LIMIT. An intake row that cannot become
--   an outbox row is quarantined (dead, with the reason) instead of failing every claim.
-- * A ticket that re-enters open/in_progress (from escalated, resolved or closed)
--   starts a new SLA cycle: new deadlines from that moment; warnings are once per
--   ticket, deadline kind and deadline, so a new cycle warns again.
-- * retry-dead re-queues a row only while it is its ticket's newest.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sla_daemon_owner') THEN
        CREATE ROLE sla_daemon_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sla_daemon_runtime') THEN
        CREATE ROLE sla_daemon_runtime NOLOGIN;
    END IF;
    -- A migration role that is not a superuser must be a member of the owner role to
    -- hand objects to it (ALTER ... OWNER TO).
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'sla_daemon_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT sla_daemon_owner TO %I', current_user);
    END IF;
END
$$;

-- Hand the schema and everything in it to sla_daemon_owner. The migration runner
-- calls this after every migration, so objects of later migrations are handed over too.
CREATE FUNCTION sla_daemon.settle_ownership() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    EXECUTE 'ALTER SCHEMA sla_daemon OWNER TO sla_daemon_owner';
    FOR r IN
        SELECT c.oid::regclass AS name, c.relkind
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'sla_daemon' AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')
          AND c.relowner <> 'sla_daemon_owner'::regrole
          -- identity and serial sequences follow their table
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::regclass
                            AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s OWNER TO sla_daemon_owner',
            CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                           WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                           ELSE 'TABLE' END, r.name);
    END LOOP;
    FOR r IN
        SELECT t.oid::regtype AS name
        FROM pg_catalog.pg_type t
        JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'sla_daemon' AND t.typtype IN ('d', 'e')
          AND t.typowner <> 'sla_daemon_owner'::regrole
    LOOP
        EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO sla_daemon_owner', r.name);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS name
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'sla_daemon' AND p.proowner <> 'sla_daemon_owner'::regrole
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s OWNER TO sla_daemon_owner', r.name);
    END LOOP;
END
$$;

-- What claims serialise on: a row only roles with UPDATE on this table can lock.
CREATE TABLE sla_daemon.locks (name text PRIMARY KEY);
INSERT INTO sla_daemon.locks VALUES ('claim');

-- Rows present only inside escalate_ticket's own transaction: the status trigger
-- calls a change an escalation only when its ticket has one (writers cannot insert).
CREATE TABLE sla_daemon.escalation_marks (ticket_id uuid PRIMARY KEY);

-- Fencing tokens: one per claim; a row's current token is the only one that finishes it.
CREATE SEQUENCE sla_daemon.claim_tokens;
ALTER TABLE sla_daemon.outbox ADD COLUMN claim_token bigint;

-- A breached ticket whose escalation failed is looked at again after its own backoff:
-- due_at is when the sweep next looks (breach_type still judges the ticket's deadline).
ALTER TABLE sla_daemon.deadlines
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- Warnings once per ticket, deadline kind and deadline: a new SLA cycle warns again.
DROP INDEX sla_daemon.events_warning_once;
CREATE UNIQUE INDEX events_warning_once ON sla_daemon.events (ticket_id, deadline_kind, deadline)
    WHERE kind = 'warning';

-- Every function: pinned search_path. Trigger functions: run as the owner.
ALTER FUNCTION sla_daemon.sla_config_for(uuid, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.compute_deadlines(uuid, text, timestamptz, boolean)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.breach_type(text, boolean, timestamptz, timestamptz, timestamptz)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.tickets_set_deadlines()
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.tickets_deadlines_changed()
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.reschedule(uuid[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.tidy_deadlines() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.next_event_at(timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.outbox_sleep() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.outbox_awake() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sla_daemon.outbox_release() SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION sla_daemon.schedule_tickets(p_ticket_ids uuid[]) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_next timestamptz;
    v_warn timestamptz;
BEGIN
    DELETE FROM sla_daemon.deadlines d WHERE d.ticket_id = ANY (p_ticket_ids);
    DELETE FROM sla_daemon.warnings w WHERE w.ticket_id = ANY (p_ticket_ids);
    WITH ins AS (
        INSERT INTO sla_daemon.deadlines (ticket_id, deadline_kind, due_at)
        SELECT t.id, k.kind, k.deadline
        FROM public.tickets t
        CROSS JOIN LATERAL (VALUES ('response', t.sla_response_deadline),
                                   ('resolution', t.sla_resolution_deadline)) AS k(kind, deadline)
        WHERE t.id = ANY (p_ticket_ids)
          AND k.deadline IS NOT NULL AND NOT t.is_sensitive
          AND (t.status = 'open' OR (t.status = 'in_progress' AND k.kind = 'resolution'))
        RETURNING due_at
    )
    SELECT min(due_at) INTO v_next FROM ins;
    WITH due AS (
        SELECT t.id, k.kind, k.deadline,
               t.created_at + (k.deadline - t.created_at) * (c.warning_threshold_pct / 100.0) AS warn_at
        FROM public.tickets t
        CROSS JOIN LATERAL sla_daemon.sla_config_for(t.tenant_id, t.category) c
        CROSS JOIN LATERAL (VALUES ('response', t.sla_response_deadline),
                                   ('resolution', t.sla_resolution_deadline)) AS k(kind, deadline)
        WHERE t.id = ANY (p_ticket_ids)
          AND t.status IN ('open', 'in_progress') AND NOT t.is_sensitive
          AND k.deadline IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM sla_daemon.events e
                          WHERE e.kind = 'warning' AND e.ticket_id = t.id
                            AND e.deadline_kind = k.kind AND e.deadline = k.deadline)
    ), ins AS (
        INSERT INTO sla_daemon.warnings (ticket_id, deadline_kind, warn_at, deadline)
        SELECT id, kind, warn_at, deadline FROM due
        RETURNING warn_at
    )
    SELECT min(warn_at) INTO v_warn FROM ins;
    RETURN least(v_next, v_warn);
END
$$;

-- A new SLA cycle from now: the ticket's deadlines recomputed with its config's
-- durations (the deadlines trigger then reschedules it). Sensitive tickets get none.
CREATE FUNCTION sla_daemon.start_cycle(p_ticket_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    SELECT c.response_deadline, c.resolution_deadline INTO d
    FROM public.tickets t
    CROSS JOIN LATERAL sla_daemon.compute_deadlines(t.tenant_id, t.category, now(),
                                                    t.is_sensitive) c
    WHERE t.id = p_ticket_id;
    IF FOUND THEN
        UPDATE public.tickets t
        SET sla_response_deadline = d.response_deadline,
            sla_resolution_deadline = d.resolution_deadline
        WHERE t.id = p_ticket_id;
    END IF;
END
$$;

-- The status trigger: the intake row, the wake-up, and a new cycle on re-entry.
CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind text;
BEGIN
    IF OLD.status IS NOT DISTINCT FROM NEW.status THEN
        RETURN NULL;
    END IF;
    -- The setting is the cheap test, the mark (which writers cannot insert) the proof;
    -- the mark is read in its own statement, only while the setting is on: inside the
    -- INSERT, its subquery would be set up (relation opened and locked) on every change
    -- (measured: about 45 us of CPU per status change at 32 clients).
    v_kind := 'status';
    IF current_setting('sla_daemon.escalating', true) = 'on' THEN
        IF EXISTS (SELECT 1 FROM sla_daemon.escalation_marks m WHERE m.ticket_id = NEW.id) THEN
            v_kind := 'escalation';
        END IF;
    END IF;
    INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
    VALUES (NEW.id, v_kind, OLD.status::text, NEW.status::text);
    -- Fails at once while a daemon holds the lock shared (awake): the usual case.
    IF pg_try_advisory_xact_lock(5459011, 1) THEN
        IF (SELECT w.sleeping FROM sla_daemon.wakeups w WHERE w.name = 'outbox') THEN
            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
            PERFORM pg_notify('sla_daemon_outbox', '');
        END IF;
    END IF;
    IF NEW.status IN ('open', 'in_progress') AND OLD.status NOT IN ('open', 'in_progress') THEN
        IF NEW.sla_response_deadline IS NOT DISTINCT FROM OLD.sla_response_deadline
           AND NEW.sla_resolution_deadline IS NOT DISTINCT FROM OLD.sla_resolution_deadline THEN
            PERFORM sla_daemon.start_cycle(NEW.id);
        ELSE
            -- deadlines set by this same UPDATE are kept (their trigger schedules them)
            PERFORM sla_daemon.reschedule(ARRAY[NEW.id]);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Every status change, however it was made: a plain AFTER UPDATE trigger, which sees
-- a status set by a BEFORE trigger too (a column-list trigger fires only when the
-- statement names the column). The function returns at once when the status is
-- unchanged. Not a WHEN clause: the executor rebuilds a trigger's WHEN expression for
-- every statement, which measured dearer for status-changing writers than the call
-- (benchmarks/writer_overhead.py, 32 clients: 0.65x against 0.76x).
DROP TRIGGER sla_daemon_status_outbox ON public.tickets;
CREATE TRIGGER sla_daemon_status_outbox
    AFTER UPDATE ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.enqueue_status_change();

-- Warnings: recorded once per ticket, kind and deadline; one bare NOTIFY per pass
-- that recorded any (whoever needs them reads sla_daemon.events, with a grant).
CREATE OR REPLACE FUNCTION sla_daemon.record_warnings(p_limit integer DEFAULT 1000)
RETURNS TABLE (ticket_id uuid, tracking_number text, deadline_kind text,
               deadline timestamptz, warn_at timestamptz)
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
        RETURN NEXT;
    END LOOP;
    IF v_count > 0 THEN
        PERFORM pg_notify('sla_daemon_warning', '');
    END IF;
    -- Everything due that is not (or no longer) warnable, or already warned for this
    -- very deadline, leaves the schedule.
    DELETE FROM sla_daemon.warnings w
    WHERE w.warn_at <= now()
      AND (NOT EXISTS (SELECT 1 FROM sla_daemon.due_warnings d
                       WHERE d.ticket_id = w.ticket_id AND d.deadline_kind = w.deadline_kind)
           OR EXISTS (SELECT 1 FROM sla_daemon.events e
                      WHERE e.kind = 'warning' AND e.ticket_id = w.ticket_id
                        AND e.deadline_kind = w.deadline_kind AND e.deadline = w.deadline));
END
$$;

-- Escalate one ticket in the caller's transaction: under the advisory lock, the row
-- re-read FOR UPDATE (waiting at most lock_timeout for a writer's long transaction),
-- escalated only if still live and breached.
CREATE OR REPLACE FUNCTION sla_daemon.escalate_ticket(p_ticket_id uuid, p_reason text DEFAULT NULL)
RETURNS TABLE (escalated boolean, outcome text, breach_type text, manager_id uuid,
               tracking_number text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    t record;
    v_breach text;
    v_manager uuid;
    v_reason text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN
        RETURN QUERY SELECT false, 'locked', NULL::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    SELECT tk.id, tk.status::text AS status, tk.is_sensitive, tk.sla_response_deadline,
           tk.sla_resolution_deadline, tk.assigned_team_id, tk.assigned_to, tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.id = p_ticket_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'not_found', NULL::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    v_breach := sla_daemon.breach_type(t.status, t.is_sensitive, t.sla_response_deadline,
                                       t.sla_resolution_deadline, now());
    IF v_breach IS NULL THEN
        RETURN QUERY SELECT false, 'not_breached', NULL::text, NULL::uuid, t.tracking_number;
        RETURN;
    END IF;
    SELECT tm.manager_id INTO v_manager FROM public.teams tm WHERE tm.id = t.assigned_team_id;
    v_reason := coalesce(p_reason, format('SLA %s deadline missed', v_breach));
    -- Tells the status trigger that this change is an SLA escalation: the setting is
    -- the cheap test, the mark (which writers cannot insert) the proof.
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
    INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, details)
    VALUES (p_ticket_id, 'escalation', v_breach,
            CASE v_breach WHEN 'response' THEN t.sla_response_deadline
                          ELSE t.sla_resolution_deadline END,
            jsonb_build_object('reason', v_reason, 'manager_id', v_manager,
                               'previous_assignee', t.assigned_to,
                               'previous_status', t.status));
    RETURN QUERY SELECT true,
        CASE WHEN v_manager IS NULL THEN 'escalated_without_manager' ELSE 'escalated' END,
        v_breach, v_manager, t.tracking_number;
END
$$;

-- Who holds a ticket's escalation lock (for the log line when it is not ours to take).
CREATE FUNCTION sla_daemon.escalation_lock_holder(p_ticket_id uuid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('pid %s (%s, %s)', l.pid, coalesce(a.usename, '?'),
                             coalesce(nullif(a.application_name, ''), 'no application name')),
                      ', ')
    FROM pg_locks l
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
              SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.classid = 5459009::oid AND l.objsubid = 2
      AND l.objid = (hashtext(p_ticket_id::text)::bigint & 4294967295)::oid
      AND l.pid <> pg_backend_pid()
$$;

-- An escalation that failed (an error, or the lock held elsewhere): look at this
-- ticket again after its own backoff (2 s doubling to 5 min), remembering why. Rows
-- another transaction holds (another daemon escalating this very ticket, a writer
-- rescheduling it) are skipped, never waited for: two sweeps recording each other's
-- tickets as locked would otherwise deadlock; the next sweep looks again anyway.
CREATE FUNCTION sla_daemon.escalation_failed(p_ticket_id uuid, p_error text)
RETURNS timestamptz
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH mine AS (
        SELECT d.ctid FROM sla_daemon.deadlines d
        WHERE d.ticket_id = p_ticket_id AND d.due_at <= now()
        FOR UPDATE SKIP LOCKED
    )
    UPDATE sla_daemon.deadlines d
    SET attempts = d.attempts + 1, last_error = left(p_error, 500),
        due_at = now() + least(300, 2 * power(2, least(d.attempts, 16))) * interval '1 second'
    FROM mine WHERE d.ctid = mine.ctid
    RETURNING d.due_at
$$;

-- Escalate several tickets in one transaction (one commit, one WAL flush, for a sweep
-- of thousands), each still under its own advisory lock and re-check, and each in its
-- own subtransaction: a ticket that fails (a platform constraint or trigger, a row
-- locked past lock_timeout) is rolled back alone, its failure recorded with its own
-- backoff in the same transaction, and the others go on.
CREATE FUNCTION sla_daemon.escalate_tickets(p_ticket_ids uuid[], p_reasons text[])
RETURNS TABLE (ticket_id uuid, escalated boolean, outcome text, breach_type text,
               manager_id uuid, tracking_number text, error text, retry_at timestamptz)
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
        EXCEPTION WHEN OTHERS THEN
            escalated := false;
            outcome := CASE SQLSTATE WHEN '55P03' THEN 'lock_timeout' ELSE 'failed' END;
            breach_type := NULL;
            manager_id := NULL;
            tracking_number := NULL;
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

-- Claim up to p_limit due rows. Serialised by a row lock on sla_daemon.locks (only
-- roles with UPDATE there can take it). Only a ticket's newest row is ever sent, never
-- while another row of that ticket is in flight; busy tickets are skipped before the
-- LIMIT; older due rows are superseded. Every claim has a fresh token.
DROP FUNCTION sla_daemon.claim_outbox(text, integer, double precision);
CREATE FUNCTION sla_daemon.claim_outbox(p_worker text, p_limit integer,
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
    )
    INSERT INTO sla_daemon.outbox (id, ticket_id, kind, old_status, new_status, created_at,
                                   next_attempt_at, state, finished_at, last_error)
    SELECT m.id, m.ticket_id, CASE WHEN m.valid THEN m.kind ELSE 'status' END,
           m.old_status, m.new_status, m.created_at, now(),
           CASE WHEN m.valid THEN 'pending' ELSE 'dead' END,
           CASE WHEN m.valid THEN NULL ELSE now() END,
           CASE WHEN m.valid THEN NULL
                ELSE 'quarantined: unknown kind ' || quote_literal(left(m.kind, 40)) END
    FROM moved m ORDER BY m.id
    ON CONFLICT (id) DO NOTHING;
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

-- Before a queued row is POSTed: extend its lease, only while this claim still holds
-- it (same token, lease not run out) and it is still its ticket's newest row. Returns
-- the ids that may be sent.
CREATE FUNCTION sla_daemon.extend_outbox(p_token bigint, p_ids bigint[],
                                         p_lease_seconds double precision)
RETURNS SETOF bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE sla_daemon.outbox o
    SET next_attempt_at = now() + p_lease_seconds * interval '1 second'
    WHERE o.id = ANY (p_ids) AND o.claim_token = p_token AND o.state = 'sending'
      AND o.next_attempt_at > now()
      AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox n
                      WHERE n.ticket_id = o.ticket_id AND n.id > o.id)
      AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox_intake i
                      WHERE i.ticket_id = o.ticket_id AND i.id > o.id)
    RETURNING o.id
$$;

-- Record outcomes of claimed rows in one statement, each fenced by its claim token: a
-- finish from an older claim (its lease ran out and the row was claimed again)
-- changes nothing. state 'pending' means retry after retry_in seconds; 'released'
-- hands a row back untouched (shutdown, or a lease too short to send in).
DROP FUNCTION sla_daemon.finish_outbox(text, bigint[], text[], text[], integer[], text[],
                                       double precision[], text[]);
CREATE FUNCTION sla_daemon.finish_outbox(p_tokens bigint[], p_ids bigint[], p_states text[],
                                         p_sids text[], p_codes integer[], p_errors text[],
                                         p_retry_in double precision[], p_languages text[])
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH r AS (
        SELECT * FROM unnest(p_tokens, p_ids, p_states, p_sids, p_codes, p_errors, p_retry_in,
                             p_languages)
            AS r(token, id, state, sid, code, error, retry_in, language)
    ), done AS (
        UPDATE sla_daemon.outbox o
        SET state = CASE WHEN r.state = 'released' THEN 'pending' ELSE r.state END,
            attempts = CASE WHEN r.state = 'released' THEN greatest(o.attempts - 1, 0)
                            ELSE o.attempts END,
            message_sid = coalesce(r.sid, o.message_sid),
            error_code = CASE WHEN r.state = 'released' THEN o.error_code ELSE r.code END,
            last_error = CASE WHEN r.state = 'released' THEN o.last_error ELSE r.error END,
            language = coalesce(r.language, o.language),
            locked_by = NULL,
            claim_token = NULL,
            finished_at = CASE WHEN r.state IN ('pending', 'released') THEN NULL ELSE now() END,
            next_attempt_at = CASE WHEN r.state = 'pending'
                                   THEN now() + coalesce(r.retry_in, 0) * interval '1 second'
                                   WHEN r.state = 'released' THEN now()
                                   ELSE o.next_attempt_at END
        FROM r
        WHERE o.id = r.id AND o.state = 'sending' AND o.claim_token = r.token
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

-- Re-queue dead rows (all, or those given) once their cause is fixed; a row that is
-- no longer its ticket's newest ends superseded instead (retention keeps each
-- ticket's newest row, so "newest" survives purges). Returns the rows re-queued.
CREATE OR REPLACE FUNCTION sla_daemon.requeue_dead(p_ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    WITH dead AS (
        SELECT o.id,
               greatest((SELECT max(n.id) FROM sla_daemon.outbox n WHERE n.ticket_id = o.ticket_id),
                        (SELECT max(i.id) FROM sla_daemon.outbox_intake i
                         WHERE i.ticket_id = o.ticket_id)) AS newest
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

-- Event log retention, run by the daemon's housekeeping: the daemon's role may not
-- DELETE from the event log, only call this, which deletes events older than
-- p_days days, at most p_limit of them, except those of tickets still open or in
-- progress (a warning's event keeps it from being given twice while its deadline lives).
CREATE FUNCTION sla_daemon.purge_events(p_days double precision, p_limit integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH old AS (
        SELECT e.id FROM sla_daemon.events e
        WHERE p_days > 0 AND e.created_at < now() - p_days * interval '1 day'
          AND NOT EXISTS (SELECT 1 FROM public.tickets t
                          WHERE t.id = e.ticket_id AND t.status IN ('open', 'in_progress'))
        LIMIT greatest(p_limit, 0)
    ), gone AS (
        DELETE FROM sla_daemon.events e USING old WHERE e.id = old.id RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;

SELECT sla_daemon.settle_ownership();

-- Nobody but the owner and the roles below may use the schema or call its functions.
REVOKE ALL ON SCHEMA sla_daemon FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA sla_daemon FROM PUBLIC;

-- The owner (trigger functions and views run as it): what the triggers read and the
-- new cycle writes on the platform's tables.
GRANT USAGE ON SCHEMA public TO sla_daemon_owner;
GRANT SELECT (id, tenant_id, tracking_number, category, status, is_sensitive, created_at,
              sla_response_deadline, sla_resolution_deadline)
    ON public.tickets TO sla_daemon_owner;
GRANT UPDATE (sla_response_deadline, sla_resolution_deadline) ON public.tickets
    TO sla_daemon_owner;
GRANT SELECT (municipality_id, category, response_hours, resolution_hours,
              warning_threshold_pct, is_active)
    ON public.sla_configs TO sla_daemon_owner;

-- The running daemon: the columns it reads and writes, nothing more.
GRANT USAGE ON SCHEMA public, sla_daemon TO sla_daemon_runtime;
GRANT SELECT (id, tenant_id, tracking_number, user_id, category, status, is_sensitive,
              assigned_team_id, assigned_to, created_at, sla_response_deadline,
              sla_resolution_deadline, escalated_at)
    ON public.tickets TO sla_daemon_runtime;
GRANT UPDATE (status, escalated_at, escalation_reason, assigned_to) ON public.tickets
    TO sla_daemon_runtime;
GRANT SELECT (id, phone, preferred_language) ON public.users TO sla_daemon_runtime;
GRANT SELECT (id, manager_id) ON public.teams TO sla_daemon_runtime;
GRANT SELECT (id, name) ON public.municipalities TO sla_daemon_runtime;
GRANT SELECT (municipality_id, category, response_hours, resolution_hours,
              warning_threshold_pct, is_active)
    ON public.sla_configs TO sla_daemon_runtime;
GRANT SELECT (ticket_id, is_active), UPDATE (is_active),
      INSERT (ticket_id, assigned_to, assigned_team_id, reason, is_active, created_at)
    ON public.ticket_assignments TO sla_daemon_runtime;
DO $$
DECLARE
    v_seq text := pg_catalog.pg_get_serial_sequence('public.ticket_assignments', 'id');
BEGIN
    IF v_seq IS NOT NULL THEN  -- platforms whose assignment ids come from a sequence
        EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO sla_daemon_runtime', v_seq);
    END IF;
END
$$;
GRANT SELECT ON sla_daemon.schema_migrations, sla_daemon.sla_defaults,
                sla_daemon.breached_tickets, sla_daemon.due_warnings, sla_daemon.messages
    TO sla_daemon_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_daemon.outbox, sla_daemon.deadlines,
                                        sla_daemon.warnings
    TO sla_daemon_runtime;
GRANT SELECT, DELETE ON sla_daemon.outbox_intake TO sla_daemon_runtime;
GRANT SELECT, INSERT ON sla_daemon.events TO sla_daemon_runtime;
GRANT SELECT, UPDATE ON sla_daemon.wakeups, sla_daemon.locks TO sla_daemon_runtime;
GRANT SELECT, INSERT, DELETE ON sla_daemon.escalation_marks TO sla_daemon_runtime;
GRANT USAGE ON SEQUENCE sla_daemon.claim_tokens, sla_daemon.events_id_seq
    TO sla_daemon_runtime;
GRANT EXECUTE ON FUNCTION
    sla_daemon.sla_config_for(uuid, text),
    sla_daemon.compute_deadlines(uuid, text, timestamptz, boolean),
    sla_daemon.breach_type(text, boolean, timestamptz, timestamptz, timestamptz),
    sla_daemon.schedule_tickets(uuid[]),
    sla_daemon.reschedule(uuid[]),
    sla_daemon.tidy_deadlines(),
    sla_daemon.record_warnings(integer),
    sla_daemon.next_event_at(timestamptz),
    sla_daemon.escalate_ticket(uuid, text),
    sla_daemon.escalate_tickets(uuid[], text[]),
    sla_daemon.escalation_lock_holder(uuid),
    sla_daemon.escalation_failed(uuid, text),
    sla_daemon.claim_outbox(text, integer, double precision),
    sla_daemon.extend_outbox(bigint, bigint[], double precision),
    sla_daemon.finish_outbox(bigint[], bigint[], text[], text[], integer[], text[],
                             double precision[], text[]),
    sla_daemon.outbox_sleep(),
    sla_daemon.outbox_awake(),
    sla_daemon.outbox_release(),
    sla_daemon.requeue_dead(bigint[]),
    sla_daemon.purge_events(double precision, integer)
    TO sla_daemon_runtime;
