-- The status outbox: a status change that commits always has its notification row,
-- one that rolls back never does, whoever made it.
--
-- Row states: pending -> sending (claimed, leased) -> sent | dry_run | dead | pending
-- (retry later); pending/sending -> superseded (a newer status of the same ticket
-- exists; the citizen gets that one). While a row is 'sending', next_attempt_at is
-- its lease expiry, so one index serves both due retries and expired leases.
-- Domains rather than table CHECKs: a domain's check is prepared once per session,
-- a table CHECK is re-read by every INSERT, and every status change inserts here.
CREATE DOMAIN sla_daemon.outbox_kind AS text CHECK (VALUE IN ('status', 'escalation'));
CREATE DOMAIN sla_daemon.outbox_state AS text
    CHECK (VALUE IN ('pending', 'sending', 'sent', 'superseded', 'dry_run', 'dead'));

-- Writers append to the intake: a bare heap and its primary key, the least a status
-- change can cost them. The sender moves intake rows into the outbox (same ids, so
-- the same order) under its claim lock; the outbox's indexes and states are its own.
CREATE TABLE sla_daemon.outbox_intake (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id  uuid NOT NULL,
    kind       text NOT NULL,
    old_status text,
    new_status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE sla_daemon.outbox (
    id              bigint PRIMARY KEY,
    ticket_id       uuid NOT NULL,
    kind            sla_daemon.outbox_kind NOT NULL DEFAULT 'status',
    old_status      text,
    new_status      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    state           sla_daemon.outbox_state NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_by       text,
    finished_at     timestamptz,
    language        text,
    message_sid     text,
    error_code      integer,
    last_error      text,
    superseded_by   bigint
);
CREATE INDEX outbox_ready ON sla_daemon.outbox (next_attempt_at, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX outbox_ticket ON sla_daemon.outbox (ticket_id, id);
CREATE INDEX outbox_dead ON sla_daemon.outbox (id) WHERE state = 'dead';

-- One row trigger per changed ticket: the intake row, then, only if the sender said
-- it is asleep, a NOTIFY (every committing NOTIFY takes a cluster-wide lock, so
-- writers skip it while the sender is awake). The first writer to see the flag
-- takes its row with SKIP LOCKED; the others do not queue behind it: that writer's
-- NOTIFY wakes the sender for them all. A ticket coming back to life (reopened,
-- de-escalated) gets its deadlines scheduled again.
CREATE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IS NOT DISTINCT FROM NEW.status THEN
        RETURN NULL;
    END IF;
    INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
    VALUES (NEW.id,
            CASE WHEN current_setting('sla_daemon.escalating', true) = 'on'
                 THEN 'escalation' ELSE 'status' END,
            OLD.status::text, NEW.status::text);
    IF (SELECT w.sleeping FROM sla_daemon.wakeups w WHERE w.name = 'outbox') THEN
        PERFORM 1 FROM sla_daemon.wakeups w
        WHERE w.name = 'outbox' AND w.sleeping FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
            PERFORM pg_notify('sla_daemon_outbox', '');
        END IF;
    END IF;
    IF NEW.status IN ('open', 'in_progress') AND OLD.status NOT IN ('open', 'in_progress') THEN
        PERFORM sla_daemon.reschedule(ARRAY[NEW.id]);
    END IF;
    RETURN NULL;
END
$$;

-- The column list is tested in C from the UPDATE's SET list: updates that do not
-- set status never call the function (WHEN clauses are re-read per statement).
CREATE TRIGGER sla_daemon_status_outbox
    AFTER UPDATE OF status ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.enqueue_status_change();

-- Claim up to p_limit due rows for p_worker. Claims are serialised by an advisory
-- lock (each takes a millisecond or two), which is what lets several daemons keep
-- the per-ticket rule: only a ticket's newest row is ever sent, never while another
-- row of that ticket is in flight; older due rows are superseded, not dropped.
CREATE FUNCTION sla_daemon.claim_outbox(p_worker text, p_limit integer,
                                        p_lease_seconds double precision)
RETURNS TABLE (id bigint, ticket_id uuid, kind text, old_status text, new_status text,
               attempts integer, created_at timestamptz, tracking_number text,
               phone text, language text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(5459010, 0);
    -- Take in what writers committed, oldest first (a prefix of the intake, so a
    -- ticket's newer row never arrives before its older one).
    WITH moved AS (
        DELETE FROM sla_daemon.outbox_intake i
        WHERE i.id IN (SELECT x.id FROM sla_daemon.outbox_intake x ORDER BY x.id LIMIT 10000)
        RETURNING i.id, i.ticket_id, i.kind, i.old_status, i.new_status, i.created_at
    )
    INSERT INTO sla_daemon.outbox (id, ticket_id, kind, old_status, new_status, created_at,
                                   next_attempt_at)
    SELECT m.id, m.ticket_id, m.kind, m.old_status, m.new_status, m.created_at, now()
    FROM moved m ORDER BY m.id;
    RETURN QUERY
    WITH cand AS (
        SELECT o.id, o.ticket_id
        FROM sla_daemon.outbox o
        WHERE o.state IN ('pending', 'sending') AND o.next_attempt_at <= now()
        ORDER BY o.next_attempt_at, o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), judged AS (
        SELECT c.id, c.ticket_id,
               (SELECT max(n.id) FROM sla_daemon.outbox n WHERE n.ticket_id = c.ticket_id) AS newest,
               EXISTS (SELECT 1 FROM sla_daemon.outbox s
                       WHERE s.ticket_id = c.ticket_id AND s.id <> c.id
                         AND s.state = 'sending' AND s.next_attempt_at > now()) AS busy
        FROM cand c
    ), superseded AS (
        UPDATE sla_daemon.outbox o
        SET state = 'superseded', superseded_by = j.newest, finished_at = now(), locked_by = NULL
        FROM judged j
        WHERE o.id = j.id AND j.id < j.newest
        RETURNING o.id
    ), claimed AS (
        UPDATE sla_daemon.outbox o
        SET state = 'sending', locked_by = p_worker, attempts = o.attempts + 1,
            next_attempt_at = now() + p_lease_seconds * interval '1 second'
        FROM judged j
        WHERE o.id = j.id AND j.id = j.newest AND NOT j.busy
        RETURNING o.id, o.ticket_id, o.kind, o.old_status, o.new_status, o.attempts, o.created_at
    )
    SELECT c.id, c.ticket_id, c.kind::text, c.old_status, c.new_status, c.attempts, c.created_at,
           t.tracking_number, u.phone, u.preferred_language
    FROM claimed c
    LEFT JOIN public.tickets t ON t.id = c.ticket_id
    LEFT JOIN public.users u ON u.id = t.user_id
    ORDER BY c.id;
END
$$;

-- Record outcomes of claimed rows in one statement. Only the claimer may finish a
-- row, and only while it still holds the claim (a row whose lease ran out and was
-- claimed again belongs to the new claimer). state 'pending' means retry after
-- retry_in seconds; 'released' hands a row back untouched (shutdown).
CREATE FUNCTION sla_daemon.finish_outbox(p_worker text, p_ids bigint[], p_states text[],
                                         p_sids text[], p_codes integer[], p_errors text[],
                                         p_retry_in double precision[], p_languages text[])
RETURNS integer
LANGUAGE sql AS $$
    WITH r AS (
        SELECT * FROM unnest(p_ids, p_states, p_sids, p_codes, p_errors, p_retry_in, p_languages)
            AS r(id, state, sid, code, error, retry_in, language)
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
            finished_at = CASE WHEN r.state IN ('pending', 'released') THEN NULL ELSE now() END,
            next_attempt_at = CASE WHEN r.state = 'pending'
                                   THEN now() + coalesce(r.retry_in, 0) * interval '1 second'
                                   WHEN r.state = 'released' THEN now()
                                   ELSE o.next_attempt_at END
        FROM r
        WHERE o.id = r.id AND o.state = 'sending' AND o.locked_by = p_worker
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

-- Put sleeping = true for the sender, so the next status change wakes it.
CREATE FUNCTION sla_daemon.outbox_sleep() RETURNS void
LANGUAGE sql AS $$
    UPDATE sla_daemon.wakeups SET sleeping = true WHERE name = 'outbox' AND NOT sleeping
$$;

-- Re-queue dead rows (all, or those given) once their cause is fixed; the claim
-- still supersedes any that are no longer their ticket's newest status.
CREATE FUNCTION sla_daemon.requeue_dead(p_ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE sla_daemon.outbox o
    SET state = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL,
        locked_by = NULL
    WHERE o.state = 'dead' AND (p_ids IS NULL OR o.id = ANY (p_ids));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
        PERFORM pg_notify('sla_daemon_outbox', '');
    END IF;
    RETURN v_count;
END
$$;

-- Every status message, whether still in the intake or in the outbox.
CREATE VIEW sla_daemon.messages AS
    SELECT o.id, o.ticket_id, o.kind::text AS kind, o.old_status, o.new_status, o.created_at,
           o.state::text AS state, o.attempts, o.finished_at, o.language, o.message_sid,
           o.error_code, o.last_error
    FROM sla_daemon.outbox o
    UNION ALL
    SELECT i.id, i.ticket_id, i.kind, i.old_status, i.new_status, i.created_at,
           'pending', 0, NULL, NULL, NULL, NULL, NULL
    FROM sla_daemon.outbox_intake i;
