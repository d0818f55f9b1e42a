-- Remove everything sla-daemon installed into a platform database: its schema (with
-- outbox, event log, schedule, functions and triggers: dropping the functions drops the
-- triggers on tickets).
-- The platform's tables, their rows and the NOT VALID check constraints on
-- sla_configs stay (drop those two by hand if you want them gone).
DROP SCHEMA IF EXISTS sla_daemon CASCADE;
DROP INDEX IF EXISTS public.sla_daemon_ticket_assignments_active;
