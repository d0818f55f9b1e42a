-- The writers' path, one expression cheaper (issue 10, item 7). PL/pgSQL sets up every
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
