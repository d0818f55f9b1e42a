-- Remove everything sla-daemon installed into a platform database: its schema (with
-- outbox, event log, schedule, functions and triggers: dropping the functions drops the
-- triggers on tickets), the grants its two roles hold on the platform's tables, and
-- the roles themselves when no other database of the cluster still uses them.
-- Also its index on ticket_assignments and its two check constraints on sla_configs.
-- The platform's tables and rows stay, and so does a default gen_random_uuid() on
-- ticket_assignments.id: migration 0002 sets it only where the column had none, and
-- afterwards it cannot be told from one the platform set itself.
SET search_path = pg_catalog, pg_temp;
DROP SCHEMA IF EXISTS sla_daemon CASCADE;
DROP INDEX IF EXISTS public.sla_daemon_ticket_assignments_active;
ALTER TABLE IF EXISTS public.sla_configs
    DROP CONSTRAINT IF EXISTS sla_configs_hours_must_be_positive,
    DROP CONSTRAINT IF EXISTS sla_configs_warning_pct_must_be_1_to_99;
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['sla_daemon_runtime', 'sla_daemon_owner'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON SCHEMA public FROM %I', v_role);
        BEGIN
            EXECUTE format('DROP ROLE %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % kept: another database of this cluster still uses it', v_role;
        END;
    END LOOP;
END
$$;
RESET search_path;
