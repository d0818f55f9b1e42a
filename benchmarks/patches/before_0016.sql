-- The writers' path as it was before migration 0016 (0007's status trigger and the
-- BEFORE INSERT OR UPDATE deadline trigger), for comparing against the current one:
--   python -m benchmarks.writer_instructions --patch before0016=benchmarks/patches/before_0016.sql
--   python -m benchmarks.writer_overhead --patch before0016=benchmarks/patches/before_0016.sql
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
    IF TG_OP = 'INSERT' THEN
        IF NEW.sla_response_deadline IS NOT NULL AND NEW.sla_resolution_deadline IS NOT NULL THEN
            RETURN NEW;
        END IF;
        SELECT * INTO d FROM sla_daemon.compute_deadlines(
            NEW.tenant_id, NEW.category, coalesce(NEW.created_at, now()), false);
        NEW.sla_response_deadline := coalesce(NEW.sla_response_deadline, d.response_deadline);
        NEW.sla_resolution_deadline := coalesce(NEW.sla_resolution_deadline, d.resolution_deadline);
        RETURN NEW;
    END IF;
    IF NEW.status NOT IN ('open', 'in_progress')
       OR (NEW.category IS NOT DISTINCT FROM OLD.category
           AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id
           AND NEW.is_sensitive IS NOT DISTINCT FROM OLD.is_sensitive) THEN
        RETURN NEW;
    END IF;
    SELECT * INTO d FROM sla_daemon.ticket_deadlines(NEW.id, NEW.tenant_id, NEW.category,
                                                     coalesce(NEW.created_at, now()));
    -- A deadline this same UPDATE sets explicitly wins over the recomputed one.
    IF NEW.sla_response_deadline IS NOT DISTINCT FROM OLD.sla_response_deadline THEN
        NEW.sla_response_deadline := d.response_deadline;
    END IF;
    IF NEW.sla_resolution_deadline IS NOT DISTINCT FROM OLD.sla_resolution_deadline THEN
        NEW.sla_resolution_deadline := d.resolution_deadline;
    END IF;
    RETURN NEW;
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
    -- The setting is the cheap test, the mark (which writers cannot insert) the proof;
    -- the mark is read in its own statement, only while the setting is on: inside the
    -- INSERT, its subquery would be set up (relation opened and locked) on every change.
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
    RETURN NULL;
END
$$;

DROP TRIGGER sla_daemon_update_deadlines ON public.tickets;
DROP TRIGGER sla_daemon_set_deadlines ON public.tickets;
CREATE TRIGGER sla_daemon_set_deadlines
    BEFORE INSERT OR UPDATE OF category, tenant_id, is_sensitive ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION sla_daemon.tickets_set_deadlines();
