-- outbox_awake() that only tries the wake-up lock (as before 0016 queued it past
-- writers), for comparing against the current one:
--   python -m benchmarks.writer_overhead --clients 32 --patch tryawake=benchmarks/patches/awake_try_only.sql
CREATE OR REPLACE FUNCTION sla_daemon.outbox_awake() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_try_advisory_lock_shared(5459011, 1) THEN
        PERFORM setval('sla_daemon.outbox_hint', 1);
        RETURN true;
    END IF;
    RETURN false;
END
$$;
