-- Delivery truth and the conversation (issue 13): what Twilio's signed status
-- callbacks say happened to each message, what citizens wrote back (the 24-hour
-- WhatsApp window, STOP/START), and numbers that cannot be reached.
--
-- Phone numbers are stored in E.164 only (never as typed), and only where a citizen's
-- state must be remembered. Everything is written by the daemon's role through the
-- functions below; platform writers get nothing.

-- Outbox rows that end without a send: the number opted out (STOP), or the ticket is
-- sensitive and no automated message goes about it ('withheld').
ALTER DOMAIN sla_daemon.outbox_state DROP CONSTRAINT outbox_state_check;
ALTER DOMAIN sla_daemon.outbox_state ADD CONSTRAINT outbox_state_check
    CHECK (VALUE IN ('pending', 'sending', 'sent', 'superseded', 'dry_run', 'dead',
                     'opted_out', 'withheld'));

-- Set by a 63016 callback (free-form text outside the 24-hour window): the row is sent
-- once more, with its approved template.
ALTER TABLE sla_daemon.outbox ADD COLUMN force_template boolean NOT NULL DEFAULT false;

-- One row per citizen number the daemon knows something about.
CREATE TABLE sla_daemon.contacts (
    phone            text PRIMARY KEY CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    last_inbound_at  timestamptz,          -- the 24-hour window runs from here
    opted_out_at     timestamptz,          -- STOP; NULL again after START
    unreachable_at   timestamptz,          -- 63024/63014/63003; NULL once they write
    unreachable_code integer,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Every (MessageSid, status) callback once: a replayed callback inserts nothing.
CREATE TABLE sla_daemon.delivery_events (
    message_sid text NOT NULL,
    status      text NOT NULL,
    error_code  integer,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_sid, status)
);

-- The furthest state each message reached, whatever order its callbacks came in.
CREATE TABLE sla_daemon.deliveries (
    message_sid text PRIMARY KEY,
    outbox_id   bigint,
    ticket_id   uuid,
    phone       text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    language    text,
    status      text NOT NULL,
    error_code  integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_created ON sla_daemon.deliveries (created_at);
CREATE INDEX deliveries_phone ON sla_daemon.deliveries (phone, created_at);

-- What citizens wrote: STOP/START keywords and replies, recorded for staff.
CREATE TABLE sla_daemon.inbound_messages (
    message_sid text PRIMARY KEY,
    phone       text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    kind        text NOT NULL CHECK (kind IN ('stop', 'start', 'reply')),
    body        text,
    ticket_id   uuid,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_messages_received ON sla_daemon.inbound_messages (received_at);

-- Twilio's message statuses in the order a message moves through them; failed and
-- undelivered rank below delivered, so a late "failed" never undoes a delivery.
CREATE FUNCTION sla_daemon.delivery_rank(p_status text) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_status
        WHEN 'accepted' THEN 0 WHEN 'scheduled' THEN 0 WHEN 'queued' THEN 0
        WHEN 'sending' THEN 1 WHEN 'sent' THEN 2
        WHEN 'failed' THEN 3 WHEN 'undelivered' THEN 3 WHEN 'canceled' THEN 3
        WHEN 'delivered' THEN 4 WHEN 'read' THEN 5
    END
$$;

-- One status callback. Returns whether it moved the message forward (with the
-- message's language, for the metrics) and whether the outbox row was queued again
-- for its template (63016). The outbox row is the one named in the signed callback
-- URL, taken only while its recorded SID (if any) is this one.
CREATE FUNCTION sla_daemon.record_delivery(p_sid text, p_status text, p_code integer,
                                           p_outbox_id bigint, p_phone text)
RETURNS TABLE (changed boolean, language text, requeued boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_row record;
    v_lang text;
    v_changed boolean;
    v_requeued boolean := false;
BEGIN
    IF sla_daemon.delivery_rank(p_status) IS NULL THEN
        RAISE EXCEPTION 'unknown message status %', left(p_status, 40)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO sla_daemon.delivery_events (message_sid, status, error_code)
    VALUES (p_sid, p_status, p_code)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN  -- the same (MessageSid, status) again: already counted
        RETURN QUERY SELECT false, NULL::text, false;
        RETURN;
    END IF;
    SELECT o.id, o.ticket_id, o.language, o.state::text AS state, o.force_template
    INTO v_row
    FROM sla_daemon.outbox o
    WHERE o.id = p_outbox_id AND (o.message_sid IS NULL OR o.message_sid = p_sid)
    FOR UPDATE;
    INSERT INTO sla_daemon.deliveries AS d (message_sid, outbox_id, ticket_id, phone, language,
                                            status, error_code)
    VALUES (p_sid, v_row.id, v_row.ticket_id, p_phone, v_row.language, p_status, p_code)
    ON CONFLICT (message_sid) DO UPDATE
        SET status = EXCLUDED.status,
            error_code = coalesce(EXCLUDED.error_code, d.error_code),
            outbox_id = coalesce(d.outbox_id, EXCLUDED.outbox_id),
            ticket_id = coalesce(d.ticket_id, EXCLUDED.ticket_id),
            phone = coalesce(d.phone, EXCLUDED.phone),
            language = coalesce(d.language, EXCLUDED.language),
            updated_at = now()
        WHERE sla_daemon.delivery_rank(EXCLUDED.status) > sla_daemon.delivery_rank(d.status)
    RETURNING d.language INTO v_lang;
    v_changed := FOUND;
    IF p_code IN (63024, 63014, 63003) AND p_phone IS NOT NULL THEN
        INSERT INTO sla_daemon.contacts AS c (phone, unreachable_at, unreachable_code)
        VALUES (p_phone, now(), p_code)
        ON CONFLICT (phone) DO UPDATE
            SET unreachable_at = now(), unreachable_code = p_code, updated_at = now();
    END IF;
    IF p_code = 63016 AND v_row.id IS NOT NULL AND v_row.state = 'sent' THEN
        IF v_row.force_template THEN
            UPDATE sla_daemon.outbox o
            SET state = 'dead', error_code = 63016, finished_at = now(),
                last_error = '63016: outside the 24-hour window, even with the template'
            WHERE o.id = v_row.id;
        ELSE
            UPDATE sla_daemon.outbox o
            SET state = 'pending', force_template = true, next_attempt_at = now(),
                finished_at = NULL, error_code = 63016,
                last_error = '63016: outside the 24-hour window; sent again with the template'
            WHERE o.id = v_row.id;
            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';
            PERFORM pg_notify('sla_daemon_outbox', '');
            v_requeued := true;
        END IF;
    END IF;
    RETURN QUERY SELECT v_changed, coalesce(v_lang, v_row.language), v_requeued;
END
$$;

-- One inbound message. STOP opts the number out, START in again; any message opens
-- the 24-hour window and clears "unreachable". A reply is linked to the ticket of the
-- newest message sent to that number (NULL for unknown numbers). Returns false for a
-- replayed message (nothing changed).
CREATE FUNCTION sla_daemon.record_inbound(p_sid text, p_phone text, p_kind text, p_body text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO sla_daemon.inbound_messages (message_sid, phone, kind, body, ticket_id)
    VALUES (p_sid, p_phone, p_kind, left(p_body, 1600),
            (SELECT d.ticket_id FROM sla_daemon.deliveries d
             WHERE d.phone = p_phone AND d.ticket_id IS NOT NULL
             ORDER BY d.created_at DESC LIMIT 1))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO sla_daemon.contacts AS c (phone, last_inbound_at, opted_out_at)
    VALUES (p_phone, now(), CASE WHEN p_kind = 'stop' THEN now() END)
    ON CONFLICT (phone) DO UPDATE
        SET last_inbound_at = now(),
            opted_out_at = CASE p_kind WHEN 'stop' THEN now() WHEN 'start' THEN NULL
                                       ELSE c.opted_out_at END,
            unreachable_at = NULL, unreachable_code = NULL, updated_at = now();
    RETURN true;
END
$$;

REVOKE EXECUTE ON FUNCTION sla_daemon.delivery_rank(text),
    sla_daemon.record_delivery(text, text, integer, bigint, text),
    sla_daemon.record_inbound(text, text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sla_daemon.delivery_rank(text),
    sla_daemon.record_delivery(text, text, integer, bigint, text),
    sla_daemon.record_inbound(text, text, text, text)
    TO sla_daemon_runtime;
GRANT SELECT, INSERT, UPDATE ON sla_daemon.contacts, sla_daemon.deliveries
    TO sla_daemon_runtime;
GRANT SELECT, INSERT ON sla_daemon.delivery_events, sla_daemon.inbound_messages
    TO sla_daemon_runtime;
