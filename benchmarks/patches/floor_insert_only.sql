-- A floor, not a design: the status trigger inserting the intake row for every UPDATE,
-- without a test (not whether the status changed, not the wake-up hint; it never wakes
-- the sender). The least an in-transaction record of a change can cost a writer under
-- the security section's rules; see floor_empty_trigger.sql for the command.
CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)
    VALUES (NEW.id, 'status', OLD.status::text, NEW.status::text);
    RETURN NULL;
END
$$;
