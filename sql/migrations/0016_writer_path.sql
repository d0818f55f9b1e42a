-- The writers' path, cheaper (issue 10, item 7: status updates at >= 0.7x of the rate
-- without sla-daemon at 32 clients, benchmarks/writer_overhead.py). Measured there,
-- what a status change cost the platform's writers, beyond firing the trigger at all:
--
-- 1. Every simple expression a PL/pgSQL function evaluates is set up again in each
--    transaction (its executor state lives per transaction), and a status UPDATE is
--    usually a transaction of its own, so each IF costs a writer its set-up, not just
--    its test. The status trigger evaluated seven on every change; the usual change
--    (from open or in_progress to open, in_progress, resolved or closed: no new cycle,
--    no pause, no escalation) with a daemon awake now takes two: unchanged?, then
--    usual-and-awake? (the hint of 3 below). Measured with python -m
--    benchmarks.writer_instructions --awake: 184k instructions per status UPDATE,
--    against 187k with the usual test and the hint apart, and 105k without sla-daemon.
--    Without a daemon awake the usual change tests again and tries the wake-up lock;
--    a rare change tries the lock without reading the hint (rare changes are few, and
--    a second read of it would cost every writer while no daemon is awake). The rare
--    changes take the full path, as in 0007.
-- 2. Any BEFORE UPDATE row trigger, even one limited to columns the UPDATE does not
--    name, makes PostgreSQL lock the old row (a tuple lock and its WAL record) before
--    every UPDATE of the table. The deadline trigger was one (BEFORE INSERT OR UPDATE
--    OF category, tenant_id, is_sensitive); it is now BEFORE INSERT only, and the
--    recomputation after such an UPDATE happens in an AFTER trigger, which writes the
--    new deadlines with an UPDATE of its own (a platform UPDATE ... RETURNING therefore
--    shows the deadlines from before it; a re-read shows the new ones).
--
-- 3. The wake-up try-lock itself: every status change tried the one advisory lock an
--    awake daemon holds shared, and at 32 writers on two cores the lock manager's
--    partition lock became a convoy (measured: 0.72x without the wake-up test, 0.58x
--    with it). The awake daemon now also says so in a sequence, sla_daemon.outbox_hint
--    (1 awake, 2 asleep or unknown), which a writer reads without the lock manager;
--    only while it says 2 (or for a rare change, see 1) does a writer try the lock, as
--    before. A daemon sets 1 after taking the lock and 2 before dropping it, so 1 is
--    never shown while no daemon holds the lock, except after a daemon died while
--    awake: then writers skip the wake-up until another daemon's outbox poll (it marks
--    itself awake and asleep again), a delay of at most one poll interval, as for the
--    other lost wake-ups.
-- 4. The awake mark, taken past writers. While no daemon is marked awake, each status
--    change takes the wake-up lock for the rest of its transaction (to wake the sender
--    once); at 32 writers one of them nearly always holds it, so a daemon that only
--    tried the lock mostly failed to mark itself (575 of 621 wake-ups in one run of
--    benchmarks.writer_overhead), leaving every writer on the dear path (the lock, the
--    flag read) until its next try. outbox_awake() waits for the lock, at most
--    lock_timeout: a waiting request is queued ahead of later ones, so writers' tries
--    fail at once meanwhile (as they would against the mark) and the daemon gets the
--    lock when the holder commits, a commit's time. A writer whose transaction stays
--    open holds it longer: then the daemon goes on unmarked after 50 ms.
--
-- Nothing else changes: every status change, however made, still has its intake row in
-- the writer's transaction; cycles, pauses and the escalation mark work as in 0007.

CREATE SEQUENCE sla_daemon.outbox_hint MINVALUE 1 MAXVALUE 2 START 2;
SELECT pg_catalog.setval('sla_daemon.outbox_hint', 2);
GRANT SELECT, UPDATE ON SEQUENCE sla_daemon.outbox_hint TO sla_daemon_runtime;

-- Awake: the shared lock (waited for at most 50 ms, see 4), then the hint. Asleep: the
-- hint, then the lock dropped.
CREATE OR REPLACE FUNCTION sla_daemon.outbox_awake() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms' AS $$
BEGIN
    PERFORM pg_advisory_lock_shared(5459011, 1);
    PERFORM setval('sla_daemon.outbox_hint', 1);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END
$$;

CREATE OR REPLACE FUNCTION sla_daemon.outbox_release() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM setval('sla_daemon.outbox_hint', 2);
    RETURN pg_advisory_unlock_shared(5459011, 1);
END
$$;

CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind text;
BEGIN
    IF OLD.status IS NOT DISTINCT FROM NEW.status THEN
        RETURN NULL;
    END IF;
    IF OLD.status IN ('open', 'in_progress')
       AND NEW.status IN ('open', 'in_progress', 'resolved', 'closed')
       AND pg_sequence_last_value('sla_daemon.outbox_hint') = 1 THEN
        -- the usual change (no new cycle, no pause, not an escalation), a daemon awake
        INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
        VALUES (NEW.id, 'status', OLD.status::text, NEW.status::text);
        RETURN NULL;
    END IF;
    IF OLD.status IN ('open', 'in_progress')
       AND NEW.status IN ('open', 'in_progress', 'resolved', 'closed') THEN
        -- the usual change, no daemon awake (the wake-up below)
        INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
        VALUES (NEW.id, 'status', OLD.status::text, NEW.status::text);
    ELSE
        -- The setting is the cheap test, the mark (which writers cannot insert) the
        -- proof; the mark is read in its own statement, only while the setting is on.
        v_kind := 'status';
        IF NEW.status = 'escalated'
           AND current_setting('sla_daemon.escalating', true) = 'on' THEN
            IF EXISTS (SELECT 1 FROM sla_daemon.escalation_marks m WHERE m.ticket_id = NEW.id) THEN
                v_kind := 'escalation';
            END IF;
        END IF;
        INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
        VALUES (NEW.id, v_kind, OLD.status::text, NEW.status::text);
        IF NEW.status IN ('open', 'in_progress') AND OLD.status NOT IN ('open', 'in_progress') THEN
            IF OLD.status NOT IN ('escalated', 'resolved', 'closed') THEN
                -- back from a pause (or another status of the platform's): the same cycle
                PERFORM sla_daemon.resume_clock(NEW.id);
            ELSIF NEW.sla_response_deadline IS NOT DISTINCT FROM OLD.sla_response_deadline
               AND NEW.sla_resolution_deadline IS NOT DISTINCT FROM OLD.sla_resolution_deadline THEN
                PERFORM sla_daemon.start_cycle(NEW.id);
            ELSE
                -- deadlines set by this same UPDATE are kept (their trigger schedules them)
                PERFORM sla_daemon.reschedule(ARRAY[NEW.id]);
            END IF;
        ELSIF NEW.status NOT IN ('open', 'in_progress', 'escalated', 'resolved', 'closed')
              OR OLD.status NOT IN ('open', 'in_progress', 'escalated', 'resolved', 'closed') THEN
            PERFORM sla_daemon.pause_change(NEW.id, OLD.status::text, NEW.status::text);
        END IF;
    END IF;
    -- The hint said no daemon is awake, or this is a rare change (whose hint was not
    -- read): the lock, which fails at once while a daemon holds it.
    IF pg_try_advisory_xact_lock(5459011, 1) THEN
        IF (SELECT w.sleeping FROM sla_daemon.wakeups w WHERE w.name = 'outbox') THEN
            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
            PERFORM pg_notify('sla_daemon_outbox', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- After an UPDATE OF category, tenant_id or is_sensitive: what the BEFORE trigger of
-- 0007 did for an update, written afterwards. Sensitive tickets lose their deadlines; a
-- live ticket's are recomputed from its current cycle's start, pauses kept, and a
-- deadline the same UPDATE set explicitly wins. The UPDATE below names only the
-- deadline columns, so it does not fire this trigger again; the deadline trigger
-- (0002) schedules what it writes.
CREATE FUNCTION sla_daemon.tickets_update_deadlines() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    v_response timestamptz;
    v_resolution timestamptz;
BEGIN
    IF NEW.is_sensitive IS NOT FALSE THEN
        v_response := NULL;
        v_resolution := NULL;
    ELSIF NEW.status NOT IN ('open', 'in_progress')
       OR (NEW.category IS NOT DISTINCT FROM OLD.category
           AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id
           AND NEW.is_sensitive IS NOT DISTINCT FROM OLD.is_sensitive) THEN
        RETURN NULL;
    ELSE
        SELECT * INTO d FROM sla_daemon.ticket_deadlines(NEW.id, NEW.tenant_id, NEW.category,
                                                         coalesce(NEW.created_at, now()));
        v_response := CASE WHEN NEW.sla_response_deadline
                                IS NOT DISTINCT FROM OLD.sla_response_deadline
                           THEN d.response_deadline ELSE NEW.sla_response_deadline END;
        v_resolution := CASE WHEN NEW.sla_resolution_deadline
                                  IS NOT DISTINCT FROM OLD.sla_resolution_deadline
                             THEN d.resolution_deadline ELSE NEW.sla_resolution_deadline END;
    END IF;
    IF v_response IS DISTINCT FROM NEW.sla_response_deadline
       OR v_resolution IS DISTINCT FROM NEW.sla_resolution_deadline THEN
        UPDATE public.tickets t
        SET sla_response_deadline = v_response, sla_resolution_deadline = v_resolution
        WHERE t.id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION sla_daemon.tickets_update_deadlines() FROM PUBLIC;

-- BEFORE INSERT only, now: as 0007's insert branch.
CREATE OR REPLACE FUNCTION sla_daemon.tickets_set_deadlines() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    IF NEW.is_sensitive IS NOT FALSE THEN
        NEW.sla_response_deadline := NULL;
        NEW.sla_resolution_deadline := NULL;
        RETURN NEW;
    END IF;
    IF NEW.sla_response_deadline IS NOT NULL AND NEW.sla_resolution_deadline IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO d FROM sla_daemon.compute_deadlines(
        NEW.tenant_id, NEW.category, coalesce(NEW.created_at, now()), false);
    NEW.sla_response_deadline := coalesce(NEW.sla_response_deadline, d.response_deadline);
    NEW.sla_resolution_deadline := coalesce(NEW.sla_resolution_deadline, d.resolution_deadline);
    RETURN NEW;
END
$$;

DROP TRIGGER sla_daemon_set_deadlines ON public.tickets;
CREATE TRIGGER sla_daemon_set_deadlines
    BEFORE INSERT ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.tickets_set_deadlines();
CREATE TRIGGER sla_daemon_update_deadlines
    AFTER UPDATE OF category, tenant_id, is_sensitive ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.tickets_update_deadlines();
