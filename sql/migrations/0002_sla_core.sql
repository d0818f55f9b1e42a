-- SLA rules live in the database: one set of functions serves the ticket triggers,
-- the daemon and anyone with psql. Status may be the platform's ticket_status enum or
-- plain text: comparisons are written against bare literals, which PostgreSQL
-- coerces to the column's type, so both work (and the partial indexes match).
--
-- Advisory-lock namespace (first int4 key) used by sla-daemon: 5459009 ('SLA' + 0).
--   (5459009, hashtext(ticket_id::text)) escalation of one ticket
--   (5459010, 0)                           outbox claims
--   (5459011, 0)                           migrations (taken by the runner)

-- System defaults, used when a municipality has no active SLA config at all.
CREATE TABLE sla_daemon.sla_defaults (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    response_hours        numeric NOT NULL
        CONSTRAINT sla_defaults_response_hours_must_be_positive CHECK (response_hours > 0),
    resolution_hours      numeric NOT NULL
        CONSTRAINT sla_defaults_resolution_hours_must_be_positive CHECK (resolution_hours > 0),
    warning_threshold_pct integer NOT NULL
        CONSTRAINT sla_defaults_warning_pct_must_be_1_to_99 CHECK (warning_threshold_pct BETWEEN 1 AND 99)
);
INSERT INTO sla_daemon.sla_defaults VALUES (true, 24, 168, 80);

-- Nonsense configs are rejected from now on. NOT VALID: rows the platform already
-- holds are not rewritten or re-checked (sla_config_for ignores bad ones).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'public.sla_configs'::regclass
                     AND conname = 'sla_configs_hours_must_be_positive') THEN
        ALTER TABLE public.sla_configs ADD CONSTRAINT sla_configs_hours_must_be_positive
            CHECK (response_hours > 0 AND resolution_hours > 0) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'public.sla_configs'::regclass
                     AND conname = 'sla_configs_warning_pct_must_be_1_to_99') THEN
        ALTER TABLE public.sla_configs ADD CONSTRAINT sla_configs_warning_pct_must_be_1_to_99
            CHECK (warning_threshold_pct BETWEEN 1 AND 99) NOT VALID;
    END IF;
    -- Platforms whose ORM generates assignment ids in Python have no server default;
    -- give uuid ids one so the database can record an escalation by itself.
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = 'ticket_assignments'
                 AND column_name = 'id' AND data_type = 'uuid' AND column_default IS NULL) THEN
        ALTER TABLE public.ticket_assignments ALTER COLUMN id SET DEFAULT gen_random_uuid();
    END IF;
END
$$;

-- The SLA that applies to (municipality, category): its active category row, else
-- its active default row (category NULL), else the system defaults. Categories match
-- case-insensitively; among duplicate active rows the strictest wins.
CREATE FUNCTION sla_daemon.sla_config_for(p_municipality uuid, p_category text)
RETURNS TABLE (response_hours numeric, resolution_hours numeric,
               warning_threshold_pct integer, source text)
LANGUAGE sql STABLE AS $$
    SELECT c.response_hours, c.resolution_hours, c.warning_threshold_pct, c.source
    FROM (
        SELECT s.response_hours::numeric, s.resolution_hours::numeric,
               s.warning_threshold_pct::integer,
               CASE WHEN s.category IS NULL THEN 'municipality_default' ELSE 'category' END AS source,
               CASE WHEN s.category IS NULL THEN 1 ELSE 0 END AS rank
        FROM public.sla_configs s
        WHERE s.municipality_id = p_municipality
          AND s.is_active
          AND (s.category IS NULL OR lower(s.category) = lower(p_category))
          AND s.response_hours > 0 AND s.resolution_hours > 0
          AND s.warning_threshold_pct BETWEEN 1 AND 99
        UNION ALL
        SELECT d.response_hours, d.resolution_hours, d.warning_threshold_pct, 'system_default', 2
        FROM sla_daemon.sla_defaults d
    ) c
    ORDER BY c.rank, c.response_hours, c.resolution_hours
    LIMIT 1
$$;

-- Deadlines for a ticket created at p_created_at; sensitive tickets get none.
CREATE FUNCTION sla_daemon.compute_deadlines(p_municipality uuid, p_category text,
                                             p_created_at timestamptz, p_is_sensitive boolean)
RETURNS TABLE (response_deadline timestamptz, resolution_deadline timestamptz,
               warning_threshold_pct integer, source text)
LANGUAGE sql STABLE AS $$
    SELECT p_created_at + c.response_hours * interval '1 hour',
           p_created_at + c.resolution_hours * interval '1 hour',
           c.warning_threshold_pct, c.source
    FROM sla_daemon.sla_config_for(p_municipality, p_category) c
    WHERE p_is_sensitive IS FALSE
$$;

-- Which deadline a ticket has missed at p_at: 'resolution' (open or in progress past
-- the resolution deadline) before 'response' (still open past the response deadline);
-- NULL when none, or when the ticket is sensitive (NULL sensitivity counts as sensitive).
CREATE FUNCTION sla_daemon.breach_type(p_status text, p_is_sensitive boolean,
                                       p_response_deadline timestamptz,
                                       p_resolution_deadline timestamptz, p_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_is_sensitive IS NOT FALSE THEN NULL
        WHEN p_status IN ('open', 'in_progress') AND p_resolution_deadline <= p_at THEN 'resolution'
        WHEN p_status = 'open' AND p_response_deadline <= p_at THEN 'response'
    END
$$;

-- BEFORE INSERT / UPDATE OF category, tenant_id, is_sensitive: set the deadlines in
-- the writer's own transaction. Deadlines a client sets explicitly are kept.
CREATE FUNCTION sla_daemon.tickets_set_deadlines() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    IF NEW.is_sensitive IS NOT FALSE THEN
        NEW.sla_response_deadline := NULL;
        NEW.sla_resolution_deadline := NULL;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.sla_response_deadline IS NOT NULL AND NEW.sla_resolution_deadline IS NOT NULL THEN
            RETURN NEW;
        END IF;
    ELSE
        IF NEW.status NOT IN ('open', 'in_progress')
           OR (NEW.category IS NOT DISTINCT FROM OLD.category
               AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id
               AND NEW.is_sensitive IS NOT DISTINCT FROM OLD.is_sensitive) THEN
            RETURN NEW;
        END IF;
    END IF;
    SELECT * INTO d FROM sla_daemon.compute_deadlines(
        NEW.tenant_id, NEW.category, coalesce(NEW.created_at, now()), false);
    IF TG_OP = 'INSERT' THEN
        NEW.sla_response_deadline := coalesce(NEW.sla_response_deadline, d.response_deadline);
        NEW.sla_resolution_deadline := coalesce(NEW.sla_resolution_deadline, d.resolution_deadline);
    ELSE
        -- A deadline this same UPDATE sets explicitly wins over the recomputed one.
        IF NEW.sla_response_deadline IS NOT DISTINCT FROM OLD.sla_response_deadline THEN
            NEW.sla_response_deadline := d.response_deadline;
        END IF;
        IF NEW.sla_resolution_deadline IS NOT DISTINCT FROM OLD.sla_resolution_deadline THEN
            NEW.sla_resolution_deadline := d.resolution_deadline;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sla_daemon_set_deadlines
    BEFORE INSERT OR UPDATE OF category, tenant_id, is_sensitive ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.tickets_set_deadlines();

-- Event log: warnings (once per ticket and deadline kind) and escalations.
CREATE TABLE sla_daemon.events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id     uuid NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('warning', 'escalation')),
    deadline_kind text CHECK (deadline_kind IN ('response', 'resolution')),
    deadline      timestamptz,
    details       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX events_warning_once ON sla_daemon.events (ticket_id, deadline_kind)
    WHERE kind = 'warning';
CREATE INDEX events_created_at ON sla_daemon.events (created_at);

-- Pending warnings: when each live ticket's deadline crosses its warning threshold.
-- Kept by the ticket triggers; a row leaves when its warning is recorded or is moot.
CREATE TABLE sla_daemon.warnings (
    ticket_id     uuid NOT NULL,
    deadline_kind text NOT NULL CHECK (deadline_kind IN ('response', 'resolution')),
    warn_at       timestamptz NOT NULL,
    deadline      timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, deadline_kind)
);
CREATE INDEX warnings_warn_at ON sla_daemon.warnings (warn_at);

-- Pending deadlines of live, monitored tickets: what the breach sweep and the timer
-- read, through the index on due_at, instead of indexes on tickets. An index on
-- tickets whose predicate names status would make every status UPDATE a non-HOT
-- update (new entries in every index of tickets), slowing every writer. Rows are
-- added by the ticket triggers and leave when the ticket is escalated or found
-- no longer breachable.
CREATE TABLE sla_daemon.deadlines (
    ticket_id     uuid NOT NULL,
    deadline_kind text NOT NULL CHECK (deadline_kind IN ('response', 'resolution')),
    due_at        timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, deadline_kind)
);
CREATE INDEX deadlines_due_at ON sla_daemon.deadlines (due_at);

-- What wakes the daemon. 'timer': the next instant the timer loop will look
-- (writers NOTIFY only for something sooner); 'outbox': whether the sender is asleep
-- (writers NOTIFY only to wake it). Keeping NOTIFY rare keeps writers fast.
CREATE TABLE sla_daemon.wakeups (
    name     text PRIMARY KEY,
    sleeping boolean NOT NULL DEFAULT false,
    wake_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO sla_daemon.wakeups (name) VALUES ('timer'), ('outbox');

-- (Re)build the schedule (deadlines and pending warnings) of a set of tickets, set-based
-- so a bulk insert is one query; returns the soonest instant scheduled.
CREATE FUNCTION sla_daemon.schedule_tickets(p_ticket_ids uuid[]) RETURNS timestamptz
LANGUAGE plpgsql AS $$
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
                          WHERE e.kind = 'warning' AND e.ticket_id = t.id AND e.deadline_kind = k.kind)
    ), ins AS (
        INSERT INTO sla_daemon.warnings (ticket_id, deadline_kind, warn_at, deadline)
        SELECT id, kind, warn_at, deadline FROM due
        RETURNING warn_at
    )
    SELECT min(warn_at) INTO v_warn FROM ins;
    RETURN least(v_next, v_warn);
END
$$;

-- After deadlines are set or change: refresh the warning schedule, and wake the
-- timer loop only when the new instant is sooner than the one it sleeps towards.
-- Schedule these tickets, and wake the timer loop only when that puts an instant
-- sooner than the one it sleeps towards.
CREATE FUNCTION sla_daemon.reschedule(p_ticket_ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_next timestamptz;
BEGIN
    v_next := sla_daemon.schedule_tickets(p_ticket_ids);
    IF v_next IS NOT NULL
       AND v_next < (SELECT w.wake_at FROM sla_daemon.wakeups w WHERE w.name = 'timer') THEN
        PERFORM pg_notify('sla_daemon_timer', '');
    END IF;
END
$$;

CREATE FUNCTION sla_daemon.tickets_deadlines_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        SELECT array_agg(n.id) INTO v_ids FROM new_rows n
        WHERE n.sla_response_deadline IS NOT NULL OR n.sla_resolution_deadline IS NOT NULL;
    ELSE
        v_ids := ARRAY[NEW.id];
    END IF;
    IF v_ids IS NOT NULL THEN
        PERFORM sla_daemon.reschedule(v_ids);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sla_daemon_deadlines_inserted
    AFTER INSERT ON public.tickets
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sla_daemon.tickets_deadlines_changed();

-- The column list is tested in C from the UPDATE's SET list, before the WHEN clause:
-- a status-only UPDATE never reaches this trigger. category, tenant_id and
-- is_sensitive are listed because the BEFORE trigger recomputes deadlines for them.
CREATE TRIGGER sla_daemon_deadlines_updated
    AFTER UPDATE OF sla_response_deadline, sla_resolution_deadline, category, tenant_id,
                    is_sensitive ON public.tickets
    FOR EACH ROW
    WHEN (OLD.sla_response_deadline IS DISTINCT FROM NEW.sla_response_deadline
          OR OLD.sla_resolution_deadline IS DISTINCT FROM NEW.sla_resolution_deadline)
    EXECUTE FUNCTION sla_daemon.tickets_deadlines_changed();

-- Breached tickets on database time, one row per ticket, read from the deadline
-- schedule (an index range scan over due rows only, never all tickets), judged by
-- breach_type() on the ticket as it is now.
CREATE VIEW sla_daemon.breached_tickets AS
    SELECT t.id, t.tracking_number, t.tenant_id, t.category, t.status::text AS status,
           b.breach_type,
           CASE b.breach_type WHEN 'response' THEN t.sla_response_deadline
                              ELSE t.sla_resolution_deadline END AS deadline,
           (extract(epoch FROM now() - CASE b.breach_type
                                           WHEN 'response' THEN t.sla_response_deadline
                                           ELSE t.sla_resolution_deadline END)
            / 3600.0)::double precision AS overdue_by_hours
    FROM (SELECT DISTINCT d.ticket_id FROM sla_daemon.deadlines d WHERE d.due_at <= now()) d
    JOIN public.tickets t ON t.id = d.ticket_id
    CROSS JOIN LATERAL (
        SELECT sla_daemon.breach_type(t.status::text, t.is_sensitive, t.sla_response_deadline,
                                      t.sla_resolution_deadline, now()) AS breach_type
    ) b
    WHERE b.breach_type IS NOT NULL;

-- Due schedule rows whose ticket is no longer breachable (resolved, escalated,
-- sensitive, deadline moved, deleted) leave the schedule.
CREATE FUNCTION sla_daemon.tidy_deadlines() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM sla_daemon.deadlines d
    WHERE d.due_at <= now()
      AND NOT EXISTS (SELECT 1 FROM sla_daemon.breached_tickets b WHERE b.id = d.ticket_id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Warnings due now: live, monitored, threshold crossed, deadline not yet missed,
-- never warned before for this deadline kind.
CREATE VIEW sla_daemon.due_warnings AS
    SELECT t.id AS ticket_id, t.tracking_number, t.tenant_id, t.category, t.status::text AS status,
           w.deadline_kind, w.deadline, w.warn_at
    FROM sla_daemon.warnings w
    JOIN public.tickets t ON t.id = w.ticket_id
    WHERE w.warn_at <= now() AND w.deadline > now()
      AND NOT t.is_sensitive
      AND ((w.deadline_kind = 'response' AND t.status = 'open'
            AND t.sla_response_deadline = w.deadline)
        OR (w.deadline_kind = 'resolution' AND t.status IN ('open', 'in_progress')
            AND t.sla_resolution_deadline = w.deadline));

-- Record due warnings once each, announce them on NOTIFY channel 'sla_daemon_warning'
-- (JSON payload, for other systems), and drop schedule rows that became moot.
CREATE FUNCTION sla_daemon.record_warnings(p_limit integer DEFAULT 1000)
RETURNS TABLE (ticket_id uuid, tracking_number text, deadline_kind text,
               deadline timestamptz, warn_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
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
        PERFORM pg_notify('sla_daemon_warning', json_build_object(
            'ticket_id', r.ticket_id, 'tracking_number', r.tracking_number,
            'deadline_kind', r.deadline_kind, 'deadline', r.deadline)::text);
        ticket_id := r.ticket_id;
        tracking_number := r.tracking_number;
        deadline_kind := r.deadline_kind;
        deadline := r.deadline;
        warn_at := r.warn_at;
        RETURN NEXT;
    END LOOP;
    -- Everything due that is not (or no longer) warnable leaves the schedule.
    DELETE FROM sla_daemon.warnings w
    WHERE w.warn_at <= now()
      AND NOT EXISTS (SELECT 1 FROM sla_daemon.due_warnings d
                      WHERE d.ticket_id = w.ticket_id AND d.deadline_kind = w.deadline_kind
                        AND NOT EXISTS (SELECT 1 FROM sla_daemon.events e
                                        WHERE e.kind = 'warning' AND e.ticket_id = d.ticket_id
                                          AND e.deadline_kind = d.deadline_kind));
END
$$;

-- The next instant after p_after the timer loop must look at: a warning or a deadline
-- of a live ticket. The timer passes the time its pass started, so an instant that
-- fell due while the pass ran is not skipped.
CREATE FUNCTION sla_daemon.next_event_at(p_after timestamptz DEFAULT now()) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT least(
        (SELECT min(d.due_at) FROM sla_daemon.deadlines d WHERE d.due_at > p_after),
        (SELECT min(w.warn_at) FROM sla_daemon.warnings w WHERE w.warn_at > p_after))
$$;

-- Escalate one ticket in the caller's transaction, under a transaction-level advisory
-- lock whose key every process derives the same way from the ticket id. Under the
-- lock the ticket is re-read and escalated only if it is still live and breached.
CREATE FUNCTION sla_daemon.escalate_ticket(p_ticket_id uuid, p_reason text DEFAULT NULL)
RETURNS TABLE (escalated boolean, outcome text, breach_type text, manager_id uuid,
               tracking_number text)
LANGUAGE plpgsql AS $$
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
    -- Tells the outbox trigger that this status change is an SLA escalation.
    PERFORM set_config('sla_daemon.escalating', 'on', true);
    UPDATE public.tickets tk
    SET status = 'escalated', escalated_at = now(), escalation_reason = v_reason,
        assigned_to = coalesce(v_manager, tk.assigned_to)
    WHERE tk.id = p_ticket_id;
    PERFORM set_config('sla_daemon.escalating', '', true);
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

-- Installed into a database that already has tickets: schedule the live ones.
SELECT sla_daemon.schedule_tickets(array_agg(t.id))
FROM public.tickets t
WHERE t.status IN ('open', 'in_progress');
