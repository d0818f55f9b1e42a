-- Issue 13, the rest: citizens' replies ("it is still broken" reopens the ticket or is
-- recorded for staff), reconciliation of messages whose callbacks were lost, a 63016
-- that arrives before the send's outcome is written, and retention of the delivery
-- tables.

-- What a reply did: 'reopened' (the ticket is open again), 'not_fixed' (recorded for
-- staff: the citizen says the resolved problem is not fixed), 'unknown' (from a number
-- the daemon never messaged: recorded, nothing else). NULL: an ordinary reply.
ALTER TABLE sla_daemon.inbound_messages
    ADD COLUMN action text CHECK (action IN ('reopened', 'not_fixed', 'unknown'));
CREATE INDEX inbound_messages_ticket ON sla_daemon.inbound_messages (ticket_id, received_at)
    WHERE ticket_id IS NOT NULL;

-- When reconciliation last asked Twilio about a message (a message still not final is
-- asked again only after the bound).
ALTER TABLE sla_daemon.deliveries ADD COLUMN checked_at timestamptz;

-- Reconciliation looks at sent rows by the time they were sent.
CREATE INDEX outbox_sent_finished ON sla_daemon.outbox (finished_at) WHERE state = 'sent';

-- One reply (any inbound message that is not STOP/START). Recorded as record_inbound
-- records it (the window opens), then linked:
-- - p_not_fixed (the body holds a "not fixed" keyword) and the newest message sent to
--   this number was its ticket's "resolved" status: with p_reopen, and the ticket
--   still resolved and not sensitive, the ticket is set 'open' by this (the daemon's)
--   role: the status trigger sends the reopened text and starts a new SLA cycle.
--   Otherwise the reply is recorded for staff ('not_fixed').
-- - any other reply: linked to the citizen's newest open ticket (open, in progress or
--   escalated), else to the ticket of the newest message sent to the number.
-- - a number never messaged: recorded ('unknown'), nothing else.
-- Returns false in recorded for a replayed message (nothing changed).
CREATE FUNCTION sla_daemon.record_reply(p_sid text, p_phone text, p_body text,
                                        p_not_fixed boolean, p_reopen boolean)
RETURNS TABLE (recorded boolean, reply_ticket uuid, reply_action text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ticket uuid;
    v_status text;
    v_kind text;
    v_user uuid;
    v_link uuid;
    v_action text;
BEGIN
    IF NOT sla_daemon.record_inbound(p_sid, p_phone, 'reply', p_body) THEN
        RETURN QUERY SELECT false, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    SELECT d.ticket_id, o.new_status, o.kind::text INTO v_ticket, v_status, v_kind
    FROM sla_daemon.deliveries d
    LEFT JOIN sla_daemon.outbox o ON o.id = d.outbox_id
    WHERE d.phone = p_phone AND d.ticket_id IS NOT NULL
    ORDER BY d.created_at DESC
    LIMIT 1;
    IF v_ticket IS NULL THEN
        v_action := 'unknown';
    ELSIF p_not_fixed AND v_status = 'resolved' AND v_kind = 'status' THEN
        v_link := v_ticket;
        v_action := 'not_fixed';
        IF p_reopen THEN
            UPDATE public.tickets t SET status = 'open'
            WHERE t.id = v_ticket AND t.status = 'resolved' AND t.is_sensitive IS NOT TRUE;
            IF FOUND THEN
                v_action := 'reopened';
            END IF;
        END IF;
    ELSE
        SELECT t.user_id INTO v_user FROM public.tickets t WHERE t.id = v_ticket;
        SELECT t.id INTO v_link
        FROM public.tickets t
        WHERE t.user_id = v_user AND t.status IN ('open', 'in_progress', 'escalated')
        ORDER BY t.created_at DESC, t.id DESC
        LIMIT 1;
        v_link := coalesce(v_link, v_ticket);
    END IF;
    UPDATE sla_daemon.inbound_messages i
    SET ticket_id = v_link, action = v_action
    WHERE i.message_sid = p_sid;
    RETURN QUERY SELECT true, v_link, v_action;
END
$$;

-- What Twilio's API said about a message reconciliation looked up: recorded through
-- record_delivery (forward only, once per status), and the lookup noted. p_status NULL
-- (Twilio does not know the message, or a status this schema does not rank) records
-- nothing but the lookup.
CREATE FUNCTION sla_daemon.record_lookup(p_sid text, p_status text, p_code integer,
                                         p_outbox_id bigint, p_phone text)
RETURNS TABLE (changed boolean, language text, requeued boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF sla_daemon.delivery_rank(p_status) IS NOT NULL THEN
        RETURN QUERY SELECT * FROM sla_daemon.record_delivery(p_sid, p_status, p_code,
                                                              p_outbox_id, p_phone);
    ELSE
        RETURN QUERY SELECT false, NULL::text, false;
    END IF;
    -- The request was accepted (the row is 'sent'): 'queued' is the least it reached.
    INSERT INTO sla_daemon.deliveries AS d (message_sid, outbox_id, ticket_id, phone,
                                            language, status, checked_at)
    SELECT p_sid, o.id, o.ticket_id, p_phone, o.language, 'queued', now()
    FROM sla_daemon.outbox o WHERE o.id = p_outbox_id
    ON CONFLICT (message_sid) DO UPDATE SET checked_at = now();
END
$$;

-- A 63016 callback (or lookup) that came while its row was still 'sending' could not
-- re-queue it (its outcome was not written yet). When the outcome 'sent' is written,
-- look: a 63016 already recorded for that SID re-queues the row once with its
-- template (or, sent with the template already, ends it dead), as record_delivery
-- does for a 63016 that comes after. Each transaction sees the other's commit: the
-- callback locks the row FOR UPDATE, this runs under the UPDATE's row lock and reads
-- delivery_events afresh.
CREATE FUNCTION sla_daemon.window_failed_while_sending() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sla_daemon.delivery_events e
                   WHERE e.message_sid = NEW.message_sid AND e.error_code = 63016) THEN
        RETURN NEW;
    END IF;
    NEW.error_code := 63016;
    IF NEW.force_template THEN
        NEW.state := 'dead';
        NEW.last_error := '63016: outside the 24-hour window, even with the template';
    ELSE
        NEW.state := 'pending';
        NEW.force_template := true;
        NEW.next_attempt_at := now();
        NEW.finished_at := NULL;
        NEW.last_error := '63016: outside the 24-hour window; sent again with the template';
        UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
        PERFORM pg_notify('sla_daemon_outbox', '');
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER sla_daemon_window_failed_while_sending
    BEFORE UPDATE OF state ON sla_daemon.outbox
    FOR EACH ROW
    WHEN (NEW.state = 'sent' AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.message_sid IS NOT NULL)
    EXECUTE FUNCTION sla_daemon.window_failed_while_sending();

-- Retention, run by the daemon's housekeeping through functions of the schema's owner
-- (the daemon's role deletes nothing from these tables itself).
-- Deliveries (and their callbacks) last updated over p_days days ago, at most p_limit,
-- keeping each number's newest: a reply is linked through it.
CREATE FUNCTION sla_daemon.purge_deliveries(p_days double precision, p_limit integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH old AS (
        SELECT d.message_sid FROM sla_daemon.deliveries d
        WHERE p_days > 0 AND d.updated_at < now() - p_days * interval '1 day'
          AND (d.phone IS NULL
               OR EXISTS (SELECT 1 FROM sla_daemon.deliveries n
                          WHERE n.phone = d.phone AND n.created_at > d.created_at))
        LIMIT greatest(p_limit, 0)
    ), gone AS (
        DELETE FROM sla_daemon.deliveries d USING old
        WHERE d.message_sid = old.message_sid
        RETURNING d.message_sid
    ), events AS (
        DELETE FROM sla_daemon.delivery_events e USING gone
        WHERE e.message_sid = gone.message_sid
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;

-- Citizens' messages received over p_days days ago, and numbers with nothing left to
-- remember (no opt-out, not unreachable, last heard of before then); at most p_limit
-- of each. Opt-outs are never purged.
CREATE FUNCTION sla_daemon.purge_inbound(p_days double precision, p_limit integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH old AS (
        SELECT i.message_sid FROM sla_daemon.inbound_messages i
        WHERE p_days > 0 AND i.received_at < now() - p_days * interval '1 day'
        LIMIT greatest(p_limit, 0)
    ), gone AS (
        DELETE FROM sla_daemon.inbound_messages i USING old
        WHERE i.message_sid = old.message_sid
        RETURNING 1
    ), stale AS (
        SELECT c.phone FROM sla_daemon.contacts c
        WHERE p_days > 0 AND c.opted_out_at IS NULL AND c.unreachable_at IS NULL
          AND c.updated_at < now() - p_days * interval '1 day'
        LIMIT greatest(p_limit, 0)
    ), forgotten AS (
        DELETE FROM sla_daemon.contacts c USING stale
        WHERE c.phone = stale.phone
        RETURNING 1
    )
    SELECT ((SELECT count(*) FROM gone) + (SELECT count(*) FROM forgotten))::integer
$$;

REVOKE EXECUTE ON FUNCTION
    sla_daemon.record_reply(text, text, text, boolean, boolean),
    sla_daemon.record_lookup(text, text, integer, bigint, text),
    sla_daemon.window_failed_while_sending(),
    sla_daemon.purge_deliveries(double precision, integer),
    sla_daemon.purge_inbound(double precision, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    sla_daemon.record_reply(text, text, text, boolean, boolean),
    sla_daemon.record_lookup(text, text, integer, bigint, text),
    sla_daemon.purge_deliveries(double precision, integer),
    sla_daemon.purge_inbound(double precision, integer)
    TO sla_daemon_runtime;
GRANT UPDATE (ticket_id, action) ON sla_daemon.inbound_messages TO sla_daemon_runtime;
