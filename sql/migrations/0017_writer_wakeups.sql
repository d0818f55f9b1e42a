-- The writers' path (issue 10, item 7: status updates at >= 0.7x of the rate without
-- sla-daemon at 32 clients, benchmarks/writer_overhead.py), twice.
--
-- 1. One expression cheaper. PL/pgSQL sets up every
-- expression it evaluates again in each transaction, and a status UPDATE is usually a
-- transaction of its own, so each IF costs a writer its set-up, not just its test.
-- The usual change (from open or in_progress to open, in_progress, resolved or closed)
-- with a daemon awake (the wake-up hint of 0016 says 1) now takes one test after the
-- unchanged-status one, where 0016 took two (usual?, then the hint): measured with
-- python -m benchmarks.writer_instructions --awake, 187k -> 184k instructions per status
-- UPDATE (105k without sla-daemon). A rare change (a new cycle, a pause, an escalation)
-- tries the wake-up lock without reading the hint, as before 0016: rare changes are few,
-- and a second read of the hint would cost every writer while no daemon is awake.

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

-- 2. The awake mark, taken past writers. While no daemon is marked awake, each status
--    change takes the wake-up lock for the rest of its transaction (to wake the sender
--    once); at 32 writers one of them nearly always holds it, so a daemon that only
--    tried the lock mostly failed to mark itself (575 of 621 wake-ups in one run of
--    benchmarks.writer_overhead), leaving every writer on the dear path (the lock, the
--    flag read) until its next try. outbox_awake() now waits for the lock, at most
--    lock_timeout: a waiting request is queued ahead of later ones, so writers' tries
--    fail at once meanwhile (as they would against the mark) and the daemon gets the
--    lock when the holder commits, a commit's time. A writer whose transaction stays
--    open holds it longer: then the daemon goes on unmarked after 50 ms, as before.
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
