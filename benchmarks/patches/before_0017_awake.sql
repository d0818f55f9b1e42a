-- outbox_awake() before migration 0017 (it only tried the wake-up lock), for
-- python -m benchmarks.writer_overhead --patch tryawake=benchmarks/patches/before_0017_awake.sql
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
