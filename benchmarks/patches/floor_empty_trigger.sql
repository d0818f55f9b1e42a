-- A floor, not a design: the status trigger fired and doing nothing (SECURITY DEFINER
-- with the pinned search_path, as the security section requires every function to
-- be). What firing it at all costs a writer:
--   python -m benchmarks.writer_overhead --clients 32 --repeats 6 \
--     --patch empty=benchmarks/patches/floor_empty_trigger.sql \
--     --patch insonly=benchmarks/patches/floor_insert_only.sql
CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN NULL;
END
$$;
