-- SLA clocks the way municipalities keep them (issue 12): business calendars with South
-- African public holidays and closures, deadlines in business time, pauses, and
-- escalation levels.
--
-- * A calendar: a time zone, weekly opening hours (any number of intervals a day), the
--   public holidays of a country (rows loaded from the `holidays` package by
--   `sla-daemon calendar load-holidays` and on every migrate, package version per row;
--   manual rows for days the package does not know yet) and its own closures.
-- * Business time without loops: every calendar's opening intervals are materialised
--   (one row per opening interval per local day, built with AT TIME ZONE, so DST is
--   right) with the cumulative business seconds at each end. "Business seconds at an
--   instant" (odometer) and "the instant at a business second" (business_at) are one
--   index probe each; a deadline is business_at(odometer(start) + target + paused).
--   Rows run from 1 January 2020 to 31 December five years ahead; a deadline beyond is
--   a clear error (every migrate, and `sla-daemon calendar load-holidays`, moves it on).
-- * Which calendar: the ticket's (municipality, category) assignment, else the
--   municipality's, else none: 24/7 on the wall clock, as before.
-- * Pauses: statuses listed in sla_daemon.pausing_statuses stop the resolution clock
--   (the response clock is not paused). Paused time is kept as wall-clock intervals and
--   converted to business time with the calendar of the moment, so a calendar change
--   during or after a pause stays exact. While paused the resolution deadline is NULL
--   (nothing can breach); a ticket paused after its deadline passed keeps it and still
--   breaches.
-- * Cycles: start_cycle records each new cycle (the first one is the ticket's creation),
--   so recomputations count from the cycle's start.
-- * Levels: level 1 is the escalation at the deadline; levels 2.. fire a configured
--   number of business hours after the missed deadline, while the ticket is still
--   escalated in the same cycle, each to a configured person, once per cycle, under the
--   ticket's escalation lock; missed ones fire in order in one transaction. Levels
--   change only the assignee: the citizen's one escalation notice per cycle is level 1's.

CREATE TABLE sla_daemon.calendars (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    time_zone       text NOT NULL DEFAULT 'Africa/Johannesburg'
        CONSTRAINT calendars_time_zone_must_be_known
        CHECK (now() AT TIME ZONE time_zone IS NOT NULL),
    -- whose public holidays close it (NULL: none)
    holiday_country text DEFAULT 'ZA',
    built_from      date,
    built_until     date
);

-- Opening hours: any number of intervals per ISO weekday (1 Monday .. 7 Sunday), local time.
CREATE TABLE sla_daemon.calendar_hours (
    calendar_id integer NOT NULL REFERENCES sla_daemon.calendars (id) ON DELETE CASCADE,
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    opens       time NOT NULL,
    closes      time NOT NULL,
    PRIMARY KEY (calendar_id, weekday, opens),
    CONSTRAINT calendar_hours_open_before_close CHECK (opens < closes)
);

-- A calendar's own closures: municipal days, anything not in the public holidays.
CREATE TABLE sla_daemon.calendar_closures (
    calendar_id integer NOT NULL REFERENCES sla_daemon.calendars (id) ON DELETE CASCADE,
    day         date NOT NULL,
    reason      text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (calendar_id, day)
);

-- Public holidays per country: from the holidays package (its version per row), or
-- added by hand (source 'manual': a declared day the package does not know yet; a
-- reload never removes or overwrites those).
CREATE TABLE sla_daemon.public_holidays (
    country         text NOT NULL,
    day             date NOT NULL,
    name            text NOT NULL,
    source          text NOT NULL CHECK (source IN ('holidays', 'manual')),
    package_version text,
    loaded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (country, day)
);

-- Which calendar a municipality's tickets run on: category '' is the municipality's
-- own; a category row (lower case) overrides it; calendar_id NULL says 24/7.
CREATE TABLE sla_daemon.calendar_assignments (
    municipality_id uuid NOT NULL,
    category        text NOT NULL DEFAULT '' CHECK (category = lower(category)),
    calendar_id     integer REFERENCES sla_daemon.calendars (id),
    PRIMARY KEY (municipality_id, category)
);

-- The materialised opening intervals: cumulative business seconds (from built_from)
-- at each interval's start and end.
CREATE TABLE sla_daemon.calendar_intervals (
    calendar_id integer NOT NULL REFERENCES sla_daemon.calendars (id) ON DELETE CASCADE,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    cum_start   double precision NOT NULL,
    cum_end     double precision NOT NULL,
    PRIMARY KEY (calendar_id, starts_at)
);
CREATE INDEX calendar_intervals_cum_end ON sla_daemon.calendar_intervals (calendar_id, cum_end);

-- Statuses that stop the resolution clock (the platform's enum may or may not have them).
CREATE TABLE sla_daemon.pausing_statuses (
    status text PRIMARY KEY
        CONSTRAINT pausing_statuses_not_a_core_status
        CHECK (status NOT IN ('open', 'in_progress', 'escalated', 'resolved', 'closed'))
);
INSERT INTO sla_daemon.pausing_statuses VALUES ('waiting_on_citizen'), ('on_hold');

-- SLA cycles after the first (which starts at created_at): one row per re-entry.
CREATE TABLE sla_daemon.cycles (
    ticket_id  uuid NOT NULL,
    cycle      integer NOT NULL CHECK (cycle >= 2),
    started_at timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, cycle)
);

-- Pauses of the resolution clock, wall-clock intervals (ended_at NULL: still paused).
CREATE TABLE sla_daemon.pauses (
    ticket_id  uuid NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    status     text NOT NULL,
    PRIMARY KEY (ticket_id, started_at),
    CHECK (ended_at >= started_at)
);

-- Escalation levels 2.. per municipality (category '') or category: after_hours business
-- hours after the missed deadline, the ticket is assigned to assign_to.
CREATE TABLE sla_daemon.escalation_levels (
    municipality_id uuid NOT NULL,
    category        text NOT NULL DEFAULT '' CHECK (category = lower(category)),
    level           smallint NOT NULL CHECK (level >= 2),
    after_hours     numeric NOT NULL CHECK (after_hours > 0),
    assign_to       uuid NOT NULL,
    PRIMARY KEY (municipality_id, category, level)
);

-- The next level due per escalated ticket (read by the sweep through due_at).
CREATE TABLE sla_daemon.level_schedule (
    ticket_id     uuid PRIMARY KEY,
    cycle         integer NOT NULL,
    level         smallint NOT NULL,
    base_deadline timestamptz NOT NULL,
    due_at        timestamptz NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX level_schedule_due_at ON sla_daemon.level_schedule (due_at);

-- Escalation events know their level and cycle; each fires once per cycle.
ALTER TABLE sla_daemon.events ADD COLUMN level smallint, ADD COLUMN cycle integer;
CREATE UNIQUE INDEX events_level_once ON sla_daemon.events (ticket_id, cycle, level)
    WHERE kind = 'escalation' AND level IS NOT NULL;

------------------------------------------------------------------------------------------
-- Business time

-- (Re)materialise a calendar's opening intervals. Overlapping hours are refused.
CREATE FUNCTION sla_daemon.build_calendar(p_calendar integer) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    v_from date;
    v_until date;
    v_count integer;
BEGIN
    SELECT * INTO c FROM sla_daemon.calendars k WHERE k.id = p_calendar FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sla_daemon: no calendar with id %', p_calendar;
    END IF;
    IF EXISTS (SELECT 1 FROM (
                   SELECT h.opens, lag(h.closes) OVER (PARTITION BY h.weekday ORDER BY h.opens) AS prev
                   FROM sla_daemon.calendar_hours h WHERE h.calendar_id = p_calendar) x
               WHERE x.prev > x.opens) THEN
        RAISE EXCEPTION 'sla_daemon: calendar "%" has overlapping opening hours', c.name;
    END IF;
    v_from := date '2020-01-01';  -- the history kept (calendars.FIRST_YEAR)
    v_until := make_date(extract(year FROM now() AT TIME ZONE c.time_zone)::integer + 5, 12, 31);
    DELETE FROM sla_daemon.calendar_intervals i WHERE i.calendar_id = p_calendar;
    INSERT INTO sla_daemon.calendar_intervals (calendar_id, starts_at, ends_at, cum_start, cum_end)
    SELECT p_calendar, o.s, o.e,
           sum(o.len) OVER w - o.len, sum(o.len) OVER w
    FROM (
        SELECT x.s, x.e, extract(epoch FROM x.e - x.s)::double precision AS len
        FROM (
            SELECT (g.d::date + h.opens) AT TIME ZONE c.time_zone AS s,
                   (g.d::date + h.closes) AT TIME ZONE c.time_zone AS e
            FROM generate_series(v_from::timestamp, v_until::timestamp, interval '1 day') AS g(d)
            JOIN sla_daemon.calendar_hours h
              ON h.calendar_id = p_calendar AND h.weekday = extract(isodow FROM g.d)
            WHERE NOT EXISTS (SELECT 1 FROM sla_daemon.calendar_closures z
                              WHERE z.calendar_id = p_calendar AND z.day = g.d::date)
              AND NOT EXISTS (SELECT 1 FROM sla_daemon.public_holidays ph
                              WHERE ph.country = c.holiday_country AND ph.day = g.d::date)
        ) x
        WHERE x.e > x.s  -- an interval that a DST gap swallowed
    ) o
    WINDOW w AS (ORDER BY o.s);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE sla_daemon.calendars k SET built_from = v_from, built_until = v_until
    WHERE k.id = p_calendar;
    RETURN v_count;
END
$$;

-- Business seconds of a calendar at an instant (outside hours: those of the last close).
CREATE FUNCTION sla_daemon.odometer(p_calendar integer, p_at timestamptz)
RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v double precision;
BEGIN
    SELECT i.cum_start + least(greatest(extract(epoch FROM p_at - i.starts_at)::double precision, 0),
                               i.cum_end - i.cum_start)
    INTO v
    FROM sla_daemon.calendar_intervals i
    WHERE i.calendar_id = p_calendar AND i.starts_at <= p_at
    ORDER BY i.starts_at DESC
    LIMIT 1;
    RETURN coalesce(v, 0);
END
$$;

-- The instant a calendar's odometer reaches p_seconds: the earliest, so a deadline that
-- exactly fills a day lands at closing time, not at the next opening.
CREATE FUNCTION sla_daemon.business_at(p_calendar integer, p_seconds double precision)
RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v timestamptz;
BEGIN
    SELECT i.starts_at + (p_seconds - i.cum_start) * interval '1 second'
    INTO v
    FROM sla_daemon.calendar_intervals i
    WHERE i.calendar_id = p_calendar AND i.cum_end >= p_seconds
    ORDER BY i.cum_end
    LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION 'sla_daemon: a deadline lies beyond the opening hours materialised for calendar "%" (until %)',
            (SELECT k.name FROM sla_daemon.calendars k WHERE k.id = p_calendar),
            (SELECT k.built_until FROM sla_daemon.calendars k WHERE k.id = p_calendar)
            USING ERRCODE = '22023',
                  HINT = 'Run "sla-daemon calendar load-holidays" (or migrate) to extend every calendar; a calendar needs opening hours.';
    END IF;
    RETURN v;
END
$$;

-- The calendar of (municipality, category): the category's assignment, else the
-- municipality's; NULL: 24/7. (The small helpers on the insert path are PL/pgSQL, not
-- SQL: a SQL function with a SET clause is never inlined and is planned again in
-- every transaction; PL/pgSQL keeps its plans for the session.)
CREATE FUNCTION sla_daemon.calendar_for(p_municipality uuid, p_category text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT a.calendar_id FROM sla_daemon.calendar_assignments a
            WHERE a.municipality_id = p_municipality AND a.category IN ('', lower(p_category))
            ORDER BY a.category DESC
            LIMIT 1);
END
$$;

-- p_seconds of business time after p_start on p_calendar (NULL: the wall clock).
CREATE FUNCTION sla_daemon.business_add(p_calendar integer, p_start timestamptz,
                                        p_seconds double precision)
RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_calendar IS NULL THEN
        RETURN p_start + p_seconds * interval '1 second';
    END IF;
    RETURN sla_daemon.business_at(p_calendar,
                                  sla_daemon.odometer(p_calendar, p_start) + p_seconds);
END
$$;

-- Business seconds between two instants on p_calendar (NULL: wall-clock seconds).
CREATE FUNCTION sla_daemon.business_seconds(p_calendar integer, p_from timestamptz,
                                            p_to timestamptz)
RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_from IS NULL OR p_to IS NULL THEN
        RETURN NULL;
    ELSIF p_calendar IS NULL THEN
        RETURN extract(epoch FROM p_to - p_from)::double precision;
    END IF;
    RETURN sla_daemon.odometer(p_calendar, p_to) - sla_daemon.odometer(p_calendar, p_from);
END
$$;

-- Deadlines for a ticket whose cycle starts at p_created_at, in business time on the
-- calendar of its (municipality, category); sensitive tickets get none.
CREATE OR REPLACE FUNCTION sla_daemon.compute_deadlines(p_municipality uuid, p_category text,
                                             p_created_at timestamptz, p_is_sensitive boolean)
RETURNS TABLE (response_deadline timestamptz, resolution_deadline timestamptz,
               warning_threshold_pct integer, source text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    v_cal integer;
    v0 double precision;
BEGIN
    IF p_is_sensitive IS NOT FALSE THEN
        RETURN;
    END IF;
    SELECT * INTO c FROM sla_daemon.sla_config_for(p_municipality, p_category);
    v_cal := sla_daemon.calendar_for(p_municipality, p_category);
    warning_threshold_pct := c.warning_threshold_pct;
    source := c.source;
    IF v_cal IS NULL THEN
        response_deadline := p_created_at + c.response_hours * interval '1 hour';
        resolution_deadline := p_created_at + c.resolution_hours * interval '1 hour';
        RETURN NEXT;
        RETURN;
    END IF;
    -- odometer() and business_at() written out: this runs for every ticket inserted,
    -- and each call of a function with a SET clause costs a GUC save and restore.
    SELECT i.cum_start + least(greatest(extract(epoch FROM p_created_at - i.starts_at)::float8, 0),
                               i.cum_end - i.cum_start)
    INTO v0
    FROM sla_daemon.calendar_intervals i
    WHERE i.calendar_id = v_cal AND i.starts_at <= p_created_at
    ORDER BY i.starts_at DESC LIMIT 1;
    v0 := coalesce(v0, 0);
    SELECT i.starts_at + (v0 + c.response_hours * 3600 - i.cum_start) * interval '1 second'
    INTO response_deadline
    FROM sla_daemon.calendar_intervals i
    WHERE i.calendar_id = v_cal AND i.cum_end >= v0 + c.response_hours * 3600
    ORDER BY i.cum_end LIMIT 1;
    SELECT i.starts_at + (v0 + c.resolution_hours * 3600 - i.cum_start) * interval '1 second'
    INTO resolution_deadline
    FROM sla_daemon.calendar_intervals i
    WHERE i.calendar_id = v_cal AND i.cum_end >= v0 + c.resolution_hours * 3600
    ORDER BY i.cum_end LIMIT 1;
    IF resolution_deadline IS NULL THEN  -- past the horizon: business_at says so
        resolution_deadline := sla_daemon.business_at(v_cal, v0 + c.resolution_hours * 3600);
    END IF;
    IF response_deadline IS NULL THEN
        response_deadline := sla_daemon.business_at(v_cal, v0 + c.response_hours * 3600);
    END IF;
    RETURN NEXT;
END
$$;

-- The current SLA cycle of a ticket: its number and start (cycle 1 starts at creation).
CREATE FUNCTION sla_daemon.current_cycle(p_ticket_id uuid, p_created_at timestamptz,
                                         OUT cycle integer, OUT started_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT c.cycle, c.started_at INTO cycle, started_at
    FROM sla_daemon.cycles c WHERE c.ticket_id = p_ticket_id
    ORDER BY c.cycle DESC LIMIT 1;
    IF NOT FOUND THEN
        cycle := 1;
        started_at := p_created_at;
    END IF;
END
$$;

-- Business seconds a ticket's resolution clock was paused since p_since (ended pauses;
-- a running pause counts up to now).
CREATE FUNCTION sla_daemon.paused_seconds(p_ticket_id uuid, p_calendar integer,
                                          p_since timestamptz)
RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT sum(sla_daemon.business_seconds(p_calendar, p.started_at,
                                                            coalesce(p.ended_at, now())))
                     FROM sla_daemon.pauses p
                     WHERE p.ticket_id = p_ticket_id AND p.started_at >= p_since), 0);
END
$$;

-- A live ticket's deadlines as they stand: from its cycle's start, its config's hours on
-- its calendar, the resolution deadline moved by the business time paused this cycle.
CREATE FUNCTION sla_daemon.ticket_deadlines(p_ticket_id uuid, p_municipality uuid,
                                            p_category text, p_created_at timestamptz)
RETURNS TABLE (response_deadline timestamptz, resolution_deadline timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    v_cal integer;
    v_start timestamptz;
    v_paused double precision;
BEGIN
    SELECT * INTO c FROM sla_daemon.sla_config_for(p_municipality, p_category);
    v_cal := sla_daemon.calendar_for(p_municipality, p_category);
    v_start := (sla_daemon.current_cycle(p_ticket_id, p_created_at)).started_at;
    v_paused := sla_daemon.paused_seconds(p_ticket_id, v_cal, v_start);
    response_deadline := sla_daemon.business_add(v_cal, v_start, c.response_hours * 3600);
    resolution_deadline := sla_daemon.business_add(v_cal, v_start,
                                                   c.resolution_hours * 3600 + v_paused);
    RETURN NEXT;
END
$$;

-- A live ticket's warning instants, both kinds in one call (the insert path: one call
-- per ticket, the look-ups written out): at p_pct % of each deadline's window in
-- business time from the cycle's start, pauses excluded.
CREATE FUNCTION sla_daemon.ticket_warnings(p_ticket_id uuid, p_municipality uuid,
                                           p_category text, p_created_at timestamptz,
                                           p_response timestamptz, p_resolution timestamptz)
RETURNS TABLE (deadline_kind text, deadline timestamptz, warn_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cal integer;
    v_start timestamptz;
    v_pct integer;
    v_paused double precision := 0;
    v0 double precision;
    v_end double precision;
    v_window double precision;
BEGIN
    SELECT a.calendar_id INTO v_cal FROM sla_daemon.calendar_assignments a
    WHERE a.municipality_id = p_municipality AND a.category IN ('', lower(p_category))
    ORDER BY a.category DESC LIMIT 1;
    SELECT c.started_at INTO v_start FROM sla_daemon.cycles c
    WHERE c.ticket_id = p_ticket_id ORDER BY c.cycle DESC LIMIT 1;
    v_start := coalesce(v_start, p_created_at);
    SELECT c.warning_threshold_pct INTO v_pct
    FROM sla_daemon.sla_config_for(p_municipality, p_category) c;
    IF EXISTS (SELECT 1 FROM sla_daemon.pauses p
               WHERE p.ticket_id = p_ticket_id AND p.started_at >= v_start) THEN
        v_paused := sla_daemon.paused_seconds(p_ticket_id, v_cal, v_start);
    END IF;
    IF v_cal IS NOT NULL THEN
        v0 := sla_daemon.odometer(v_cal, v_start);
    END IF;
    FOR deadline_kind, deadline IN
        SELECT k.kind, k.at FROM (VALUES ('response', p_response),
                                         ('resolution', p_resolution)) AS k(kind, at)
        WHERE k.at IS NOT NULL
    LOOP
        IF v_cal IS NULL THEN
            v_window := extract(epoch FROM deadline - v_start)::double precision
                        - CASE deadline_kind WHEN 'resolution' THEN v_paused ELSE 0 END;
            warn_at := deadline
                       - greatest(v_window, 0) * (1 - v_pct / 100.0) * interval '1 second';
        ELSE
            SELECT i.cum_start + least(greatest(extract(epoch FROM deadline - i.starts_at)::float8,
                                                0), i.cum_end - i.cum_start)
            INTO v_end
            FROM sla_daemon.calendar_intervals i
            WHERE i.calendar_id = v_cal AND i.starts_at <= deadline
            ORDER BY i.starts_at DESC LIMIT 1;
            v_end := coalesce(v_end, 0);
            v_window := v_end - v0
                        - CASE deadline_kind WHEN 'resolution' THEN v_paused ELSE 0 END;
            v_end := v_end - greatest(v_window, 0) * (1 - v_pct / 100.0);
            SELECT i.starts_at + (v_end - i.cum_start) * interval '1 second'
            INTO warn_at
            FROM sla_daemon.calendar_intervals i
            WHERE i.calendar_id = v_cal AND i.cum_end >= v_end
            ORDER BY i.cum_end LIMIT 1;
            warn_at := coalesce(warn_at, deadline);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

------------------------------------------------------------------------------------------
-- Triggers and schedule, in business time

-- BEFORE INSERT / UPDATE OF category, tenant_id, is_sensitive: as 0002, but an update
-- counts from the current cycle's start and keeps the pauses.
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

-- As 0006, with warnings at the business-time share of each deadline's window, counted
-- from the current cycle's start, pauses excluded.
CREATE OR REPLACE FUNCTION sla_daemon.schedule_tickets(p_ticket_ids uuid[]) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_next timestamptz;
    v_warn timestamptz;
BEGIN
    DELETE FROM sla_daemon.deadlines d WHERE d.ticket_id = ANY (p_ticket_ids);
    DELETE FROM sla_daemon.warnings w WHERE w.ticket_id = ANY (p_ticket_ids);
    WITH ins AS (
        INSERT INTO sla_daemon.deadlines (ticket_id, deadline_kind, due_at)
        SELECT t.id, k.kind, k.deadline
        FROM public.tickets t
        CROSS JOIN LATERAL (VALUES ('response', t.sla_response_deadline),
                                   ('resolution', t.sla_resolution_deadline)) AS k(kind, deadline)
        WHERE t.id = ANY (p_ticket_ids)
          AND k.deadline IS NOT NULL AND NOT t.is_sensitive
          AND (t.status = 'open' OR (t.status = 'in_progress' AND k.kind = 'resolution'))
        RETURNING due_at
    )
    SELECT min(due_at) INTO v_next FROM ins;
    WITH due AS (
        SELECT t.id, w.deadline_kind AS kind, w.deadline, w.warn_at
        FROM public.tickets t
        CROSS JOIN LATERAL sla_daemon.ticket_warnings(t.id, t.tenant_id, t.category,
                                                      t.created_at, t.sla_response_deadline,
                                                      t.sla_resolution_deadline) w
        WHERE t.id = ANY (p_ticket_ids)
          AND t.status IN ('open', 'in_progress') AND NOT t.is_sensitive
          AND NOT EXISTS (SELECT 1 FROM sla_daemon.events e
                          WHERE e.kind = 'warning' AND e.ticket_id = t.id
                            AND e.deadline_kind = w.deadline_kind AND e.deadline = w.deadline)
    ), ins AS (
        INSERT INTO sla_daemon.warnings (ticket_id, deadline_kind, warn_at, deadline)
        SELECT id, kind, warn_at, deadline FROM due
        RETURNING warn_at
    )
    SELECT min(warn_at) INTO v_warn FROM ins;
    RETURN least(v_next, v_warn);
END
$$;

-- A new SLA cycle from now, recorded (for recomputations and the report).
CREATE OR REPLACE FUNCTION sla_daemon.start_cycle(p_ticket_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    INSERT INTO sla_daemon.cycles (ticket_id, cycle, started_at)
    SELECT p_ticket_id,
           coalesce((SELECT max(c.cycle) FROM sla_daemon.cycles c WHERE c.ticket_id = p_ticket_id),
                    1) + 1,
           now()
    ON CONFLICT DO NOTHING;
    SELECT c.response_deadline, c.resolution_deadline INTO d
    FROM public.tickets t
    CROSS JOIN LATERAL sla_daemon.compute_deadlines(t.tenant_id, t.category, now(),
                                                    t.is_sensitive) c
    WHERE t.id = p_ticket_id;
    IF FOUND THEN
        UPDATE public.tickets t
        SET sla_response_deadline = d.response_deadline,
            sla_resolution_deadline = d.resolution_deadline
        WHERE t.id = p_ticket_id;
    END IF;
END
$$;

-- A status change that enters or leaves a status outside the five core ones: pauses.
-- Entering a pausing status from open/in_progress before the resolution deadline stops
-- the clock (deadline NULL while paused); after the deadline it changes nothing, so
-- the breach stays. Leaving a pause ends it; into open/in_progress the deadline is
-- recomputed (the status trigger calls resume_clock for that).
CREATE FUNCTION sla_daemon.pause_change(p_ticket_id uuid, p_old text, p_new text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sla_daemon.pausing_statuses s WHERE s.status = p_new) THEN
        IF p_old IN ('open', 'in_progress') THEN
            UPDATE public.tickets t SET sla_resolution_deadline = NULL
            WHERE t.id = p_ticket_id AND t.sla_resolution_deadline > now();
            IF FOUND THEN
                INSERT INTO sla_daemon.pauses (ticket_id, started_at, status)
                VALUES (p_ticket_id, now(), p_new) ON CONFLICT DO NOTHING;
            END IF;
        END IF;
    ELSE
        UPDATE sla_daemon.pauses p SET ended_at = now()
        WHERE p.ticket_id = p_ticket_id AND p.ended_at IS NULL;
    END IF;
END
$$;

-- Back to open/in_progress from a pause: the pause ends and the resolution deadline is
-- its cycle's target plus the business time paused. Without a running pause (paused
-- after the deadline had passed) the deadlines stay and are scheduled again, so the
-- breach is seen. False when there was no pause.
CREATE FUNCTION sla_daemon.resume_clock(p_ticket_id uuid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE sla_daemon.pauses p SET ended_at = now()
    WHERE p.ticket_id = p_ticket_id AND p.ended_at IS NULL;
    IF NOT FOUND THEN
        PERFORM sla_daemon.reschedule(ARRAY[p_ticket_id]);
        RETURN false;
    END IF;
    UPDATE public.tickets t SET sla_resolution_deadline = d.resolution_deadline
    FROM public.tickets s
    CROSS JOIN LATERAL sla_daemon.ticket_deadlines(s.id, s.tenant_id, s.category, s.created_at) d
    WHERE t.id = p_ticket_id AND s.id = t.id AND NOT s.is_sensitive;
    RETURN true;
END
$$;

-- The status trigger (0006), plus: pauses, and a return from a pause is no new cycle.
-- Statuses outside the core five are looked up only when one is involved, so the
-- usual status change costs what it did.
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

-- Breaches: as 0002, but any status that is not escalated, resolved or closed is
-- unresolved: a ticket paused after its deadline passed is still breached (a paused
-- one has no resolution deadline, so it cannot breach).
CREATE OR REPLACE FUNCTION sla_daemon.breach_type(p_status text, p_is_sensitive boolean,
                                                  p_response_deadline timestamptz,
                                                  p_resolution_deadline timestamptz,
                                                  p_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN p_is_sensitive IS NOT FALSE THEN NULL
        WHEN p_status IN ('escalated', 'resolved', 'closed') THEN NULL
        WHEN p_resolution_deadline <= p_at THEN 'resolution'
        WHEN p_status = 'open' AND p_response_deadline <= p_at THEN 'response'
    END
$$;

------------------------------------------------------------------------------------------
-- Calendar changes reach live tickets

-- Recompute the deadlines of live tickets on p_calendar (NULL: 24/7), or of every live
-- ticket of p_municipality when given, whose
-- deadline has not passed; breaches that happened and escalations stay. Pending
-- escalation levels move too. Returns the tickets whose deadlines moved.
CREATE FUNCTION sla_daemon.recompute_live(p_calendar integer, p_municipality uuid DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    WITH live AS (
        SELECT t.id, t.status::text AS status, t.sla_response_deadline AS resp,
               t.sla_resolution_deadline AS resol, d.response_deadline, d.resolution_deadline
        FROM (SELECT DISTINCT s.ticket_id FROM sla_daemon.deadlines s WHERE s.due_at > now()) s
        JOIN public.tickets t ON t.id = s.ticket_id
        CROSS JOIN LATERAL sla_daemon.ticket_deadlines(t.id, t.tenant_id, t.category,
                                                       t.created_at) d
        WHERE NOT t.is_sensitive AND t.status IN ('open', 'in_progress')
          AND (CASE WHEN p_municipality IS NULL
                    THEN sla_daemon.calendar_for(t.tenant_id, t.category)
                         IS NOT DISTINCT FROM p_calendar
                    ELSE t.tenant_id = p_municipality END)
    ), moved AS (
        UPDATE public.tickets t
        SET sla_response_deadline = CASE WHEN l.status = 'open' AND l.resp > now()
                                         THEN l.response_deadline ELSE l.resp END,
            sla_resolution_deadline = CASE WHEN l.resol > now()
                                           THEN l.resolution_deadline ELSE l.resol END
        FROM live l
        WHERE t.id = l.id
          AND ((l.status = 'open' AND l.resp > now()
                AND l.response_deadline IS DISTINCT FROM l.resp)
               OR (l.resol > now() AND l.resolution_deadline IS DISTINCT FROM l.resol))
        RETURNING 1
    )
    SELECT count(*) INTO v_count FROM moved;
    UPDATE sla_daemon.level_schedule s
    SET due_at = coalesce(sla_daemon.level_due(t.tenant_id, t.category, s.base_deadline,
                                               s.level), s.due_at)
    FROM public.tickets t
    WHERE t.id = s.ticket_id AND s.due_at > now()
      AND (CASE WHEN p_municipality IS NULL
                THEN sla_daemon.calendar_for(t.tenant_id, t.category)
                     IS NOT DISTINCT FROM p_calendar
                ELSE t.tenant_id = p_municipality END);
    RETURN v_count;
END
$$;

-- A calendar changed: rebuild it, then move its live tickets.
CREATE FUNCTION sla_daemon.calendar_changed(p_calendar integer) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sla_daemon.build_calendar(p_calendar);
    RETURN sla_daemon.recompute_live(p_calendar);
END
$$;

-- Administration (the migration role, or a member of sla_daemon_owner; not the daemon).

CREATE FUNCTION sla_daemon.calendar_id(p_name text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer;
BEGIN
    SELECT k.id INTO v FROM sla_daemon.calendars k WHERE k.name = p_name;
    IF v IS NULL THEN
        RAISE EXCEPTION 'sla_daemon: no calendar named "%"', p_name USING ERRCODE = '22023';
    END IF;
    RETURN v;
END
$$;

-- Create or change a calendar's time zone and holiday country; returns its id.
CREATE FUNCTION sla_daemon.define_calendar(p_name text,
                                           p_time_zone text DEFAULT 'Africa/Johannesburg',
                                           p_holiday_country text DEFAULT 'ZA')
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer;
BEGIN
    INSERT INTO sla_daemon.calendars (name, time_zone, holiday_country)
    VALUES (p_name, p_time_zone, p_holiday_country)
    ON CONFLICT (name) DO UPDATE SET time_zone = excluded.time_zone,
                                     holiday_country = excluded.holiday_country
    RETURNING id INTO v;
    PERFORM sla_daemon.calendar_changed(v);
    RETURN v;
END
$$;

-- Replace a calendar's weekly hours: parallel arrays of ISO weekday, opening, closing.
CREATE FUNCTION sla_daemon.set_calendar_hours(p_name text, p_weekdays smallint[],
                                              p_opens time[], p_closes time[])
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer := sla_daemon.calendar_id(p_name);
BEGIN
    DELETE FROM sla_daemon.calendar_hours h WHERE h.calendar_id = v;
    INSERT INTO sla_daemon.calendar_hours (calendar_id, weekday, opens, closes)
    SELECT v, x.d, x.o, x.c FROM unnest(p_weekdays, p_opens, p_closes) AS x(d, o, c);
    RETURN sla_daemon.calendar_changed(v);
END
$$;

CREATE FUNCTION sla_daemon.add_closure(p_name text, p_day date, p_reason text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer := sla_daemon.calendar_id(p_name);
BEGIN
    INSERT INTO sla_daemon.calendar_closures (calendar_id, day, reason)
    VALUES (v, p_day, p_reason)
    ON CONFLICT (calendar_id, day) DO UPDATE SET reason = excluded.reason;
    RETURN sla_daemon.calendar_changed(v);
END
$$;

CREATE FUNCTION sla_daemon.remove_closure(p_name text, p_day date) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer := sla_daemon.calendar_id(p_name);
BEGIN
    DELETE FROM sla_daemon.calendar_closures z WHERE z.calendar_id = v AND z.day = p_day;
    RETURN sla_daemon.calendar_changed(v);
END
$$;

-- The calendar of a municipality (p_category NULL) or of one of its categories;
-- p_name NULL means 24/7. Live tickets of the municipality are recomputed.
CREATE FUNCTION sla_daemon.assign_calendar(p_municipality uuid, p_category text, p_name text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v integer;
BEGIN
    IF p_name IS NOT NULL THEN
        v := sla_daemon.calendar_id(p_name);
    END IF;
    INSERT INTO sla_daemon.calendar_assignments (municipality_id, category, calendar_id)
    VALUES (p_municipality, coalesce(lower(p_category), ''), v)
    ON CONFLICT (municipality_id, category) DO UPDATE SET calendar_id = excluded.calendar_id;
    RETURN sla_daemon.recompute_live(NULL, p_municipality);
END
$$;

-- A public holiday added by hand (a declared day the package does not know yet).
CREATE FUNCTION sla_daemon.add_public_holiday(p_country text, p_day date, p_name text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer := 0;
    k record;
BEGIN
    INSERT INTO sla_daemon.public_holidays (country, day, name, source)
    VALUES (p_country, p_day, p_name, 'manual')
    ON CONFLICT (country, day) DO UPDATE SET name = excluded.name, source = 'manual',
                                            package_version = NULL, loaded_at = now();
    FOR k IN SELECT c.id FROM sla_daemon.calendars c WHERE c.holiday_country = p_country LOOP
        v_count := v_count + sla_daemon.calendar_changed(k.id);
    END LOOP;
    RETURN v_count;
END
$$;

-- Load a country's holidays for [p_from, p_until] from the package: package rows in
-- that range are replaced (manual rows stay), every calendar is rebuilt (so its
-- horizon moves on) and live tickets move where their calendar changed.
CREATE FUNCTION sla_daemon.load_public_holidays(p_country text, p_from date, p_until date,
                                                p_days date[], p_names text[], p_version text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer;
    k record;
BEGIN
    DELETE FROM sla_daemon.public_holidays h
    WHERE h.country = p_country AND h.source = 'holidays' AND h.day BETWEEN p_from AND p_until
      AND h.day <> ALL (p_days);
    INSERT INTO sla_daemon.public_holidays (country, day, name, source, package_version)
    SELECT p_country, x.day, x.name, 'holidays', p_version
    FROM unnest(p_days, p_names) AS x(day, name)
    ON CONFLICT (country, day) DO UPDATE
        SET name = excluded.name, package_version = excluded.package_version, loaded_at = now()
        WHERE public_holidays.source = 'holidays';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    FOR k IN SELECT c.id FROM sla_daemon.calendars c LOOP
        PERFORM sla_daemon.calendar_changed(k.id);
    END LOOP;
    RETURN v_count;
END
$$;

------------------------------------------------------------------------------------------
-- Escalation levels

-- When level p_level of (municipality, category) is due for a deadline missed at
-- p_base: its business hours after p_base on the ticket's calendar; NULL: no such level.
CREATE FUNCTION sla_daemon.level_due(p_municipality uuid, p_category text,
                                     p_base timestamptz, p_level smallint)
RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT sla_daemon.business_add(sla_daemon.calendar_for(p_municipality, p_category), p_base,
                                   (l.after_hours * 3600)::double precision)
    FROM sla_daemon.escalation_levels l
    WHERE l.municipality_id = p_municipality AND l.category IN ('', lower(p_category))
      AND l.level = p_level
    ORDER BY l.category DESC
    LIMIT 1
$$;

-- The first configured level above p_level (levels need not be consecutive).
CREATE FUNCTION sla_daemon.next_level(p_municipality uuid, p_category text, p_level smallint)
RETURNS smallint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(l.level) FROM sla_daemon.escalation_levels l
    WHERE l.municipality_id = p_municipality AND l.category IN ('', lower(p_category))
      AND l.level > p_level
$$;

-- After level p_level fired: schedule the next one, or nothing when there is none.
CREATE FUNCTION sla_daemon.schedule_next_level(p_ticket_id uuid, p_municipality uuid,
                                               p_category text, p_cycle integer,
                                               p_level smallint, p_base timestamptz)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_next smallint := sla_daemon.next_level(p_municipality, p_category, p_level);
    v_due timestamptz;
BEGIN
    IF v_next IS NULL THEN
        DELETE FROM sla_daemon.level_schedule s WHERE s.ticket_id = p_ticket_id;
        RETURN;
    END IF;
    v_due := sla_daemon.level_due(p_municipality, p_category, p_base, v_next);
    IF v_due IS NULL THEN
        DELETE FROM sla_daemon.level_schedule s WHERE s.ticket_id = p_ticket_id;
        RETURN;
    END IF;
    INSERT INTO sla_daemon.level_schedule (ticket_id, cycle, level, base_deadline, due_at)
    VALUES (p_ticket_id, p_cycle, v_next, p_base, v_due)
    ON CONFLICT (ticket_id) DO UPDATE
        SET cycle = excluded.cycle, level = excluded.level, base_deadline = excluded.base_deadline,
            due_at = excluded.due_at, attempts = 0, last_error = NULL;
    IF v_due < (SELECT w.wake_at FROM sla_daemon.wakeups w WHERE w.name = 'timer') THEN
        PERFORM pg_notify('sla_daemon_timer', '');
    END IF;
END
$$;

-- Level 1, as 0006, recording its level and cycle and scheduling level 2.
CREATE OR REPLACE FUNCTION sla_daemon.escalate_ticket(p_ticket_id uuid, p_reason text DEFAULT NULL)
RETURNS TABLE (escalated boolean, outcome text, breach_type text, manager_id uuid,
               tracking_number text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    t record;
    v_breach text;
    v_manager uuid;
    v_reason text;
    v_deadline timestamptz;
    v_cycle integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN
        RETURN QUERY SELECT false, 'locked', NULL::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    SELECT tk.id, tk.tenant_id, tk.category, tk.created_at, tk.status::text AS status,
           tk.is_sensitive, tk.sla_response_deadline, tk.sla_resolution_deadline,
           tk.assigned_team_id, tk.assigned_to, tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.id = p_ticket_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'not_found', NULL::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    v_breach := sla_daemon.breach_type(t.status, t.is_sensitive, t.sla_response_deadline,
                                       t.sla_resolution_deadline, now());
    IF v_breach IS NULL THEN
        RETURN QUERY SELECT false, 'not_breached', NULL::text, NULL::uuid, t.tracking_number;
        RETURN;
    END IF;
    v_deadline := CASE v_breach WHEN 'response' THEN t.sla_response_deadline
                                ELSE t.sla_resolution_deadline END;
    v_cycle := (sla_daemon.current_cycle(p_ticket_id, t.created_at)).cycle;
    SELECT tm.manager_id INTO v_manager FROM public.teams tm WHERE tm.id = t.assigned_team_id;
    v_reason := coalesce(p_reason, format('SLA %s deadline missed', v_breach));
    INSERT INTO sla_daemon.escalation_marks (ticket_id) VALUES (p_ticket_id)
    ON CONFLICT DO NOTHING;
    PERFORM set_config('sla_daemon.escalating', 'on', true);
    UPDATE public.tickets tk
    SET status = 'escalated', escalated_at = now(), escalation_reason = v_reason,
        assigned_to = coalesce(v_manager, tk.assigned_to)
    WHERE tk.id = p_ticket_id;
    PERFORM set_config('sla_daemon.escalating', '', true);
    DELETE FROM sla_daemon.escalation_marks m WHERE m.ticket_id = p_ticket_id;
    UPDATE public.ticket_assignments a SET is_active = false
    WHERE a.ticket_id = p_ticket_id AND a.is_active;
    INSERT INTO public.ticket_assignments (ticket_id, assigned_to, assigned_team_id, reason,
                                           is_active, created_at)
    VALUES (p_ticket_id, coalesce(v_manager, t.assigned_to), t.assigned_team_id, 'escalation',
            true, now());
    DELETE FROM sla_daemon.deadlines d WHERE d.ticket_id = p_ticket_id;
    DELETE FROM sla_daemon.warnings w WHERE w.ticket_id = p_ticket_id;
    INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, level, cycle, details)
    VALUES (p_ticket_id, 'escalation', v_breach, v_deadline, 1, v_cycle,
            jsonb_build_object('reason', v_reason, 'manager_id', v_manager,
                               'assigned_to', coalesce(v_manager, t.assigned_to),
                               'previous_assignee', t.assigned_to,
                               'previous_status', t.status))
    ON CONFLICT DO NOTHING;
    PERFORM sla_daemon.schedule_next_level(p_ticket_id, t.tenant_id, t.category, v_cycle,
                                           1::smallint, v_deadline);
    RETURN QUERY SELECT true,
        CASE WHEN v_manager IS NULL THEN 'escalated_without_manager' ELSE 'escalated' END,
        v_breach, v_manager, t.tracking_number;
END
$$;

-- Fire a ticket's due escalation levels, under the same advisory lock and re-check as
-- level 1: only while it is still escalated in the cycle the level belongs to; each
-- level once per cycle (a unique event); several due levels (after downtime) fire in
-- order, once each. Only the assignee changes: no status change, no citizen message.
CREATE FUNCTION sla_daemon.escalate_levels(p_ticket_id uuid)
RETURNS TABLE (outcome text, level smallint, assigned_to uuid, tracking_number text,
               overdue_hours double precision)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s' AS $$
#variable_conflict use_column
DECLARE
    t record;
    s record;
    v_person uuid;
BEGIN
    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN
        RETURN QUERY SELECT 'locked', NULL::smallint, NULL::uuid, NULL::text, NULL::float8;
        RETURN;
    END IF;
    SELECT tk.id, tk.tenant_id, tk.category, tk.created_at, tk.status::text AS status,
           tk.assigned_team_id, tk.assigned_to, tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.id = p_ticket_id FOR UPDATE;
    LOOP
        SELECT * INTO s FROM sla_daemon.level_schedule ls
        WHERE ls.ticket_id = p_ticket_id FOR UPDATE;
        EXIT WHEN NOT FOUND OR s.due_at > now();
        IF t.id IS NULL OR t.status <> 'escalated'
           OR (sla_daemon.current_cycle(p_ticket_id, t.created_at)).cycle <> s.cycle THEN
            DELETE FROM sla_daemon.level_schedule ls WHERE ls.ticket_id = p_ticket_id;
            RETURN QUERY SELECT 'moot', s.level, NULL::uuid, t.tracking_number, NULL::float8;
            RETURN;
        END IF;
        SELECT l.assign_to INTO v_person FROM sla_daemon.escalation_levels l
        WHERE l.municipality_id = t.tenant_id AND l.category IN ('', lower(t.category))
          AND l.level = s.level
        ORDER BY l.category DESC LIMIT 1;
        IF v_person IS NOT NULL THEN
            INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, deadline, level,
                                           cycle, details)
            VALUES (p_ticket_id, 'escalation', NULL, s.base_deadline, s.level, s.cycle,
                    jsonb_build_object('assigned_to', v_person, 'previous_assignee',
                                       t.assigned_to, 'due_at', s.due_at))
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                UPDATE public.tickets tk SET assigned_to = v_person WHERE tk.id = p_ticket_id;
                UPDATE public.ticket_assignments a SET is_active = false
                WHERE a.ticket_id = p_ticket_id AND a.is_active;
                INSERT INTO public.ticket_assignments (ticket_id, assigned_to, assigned_team_id,
                                                       reason, is_active, created_at)
                VALUES (p_ticket_id, v_person, t.assigned_team_id,
                        format('escalation level %s', s.level), true, now());
                t.assigned_to := v_person;
                RETURN QUERY SELECT 'escalated', s.level, v_person, t.tracking_number,
                    extract(epoch FROM now() - s.base_deadline)::double precision / 3600;
            END IF;
        END IF;
        PERFORM sla_daemon.schedule_next_level(p_ticket_id, t.tenant_id, t.category, s.cycle,
                                               s.level, s.base_deadline);
    END LOOP;
END
$$;

-- A level that failed to fire (an error, the lock held elsewhere): again after its own
-- backoff, as escalation_failed.
CREATE FUNCTION sla_daemon.level_failed(p_ticket_id uuid, p_error text) RETURNS timestamptz
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE sla_daemon.level_schedule s
    SET attempts = s.attempts + 1, last_error = left(p_error, 500),
        due_at = now() + least(300, 2 * power(2, least(s.attempts, 16))) * interval '1 second'
    WHERE s.ticket_id = p_ticket_id AND s.due_at <= now()
    RETURNING s.due_at
$$;

-- The timer's next instant: deadlines, warnings and escalation levels.
CREATE OR REPLACE FUNCTION sla_daemon.next_event_at(p_after timestamptz DEFAULT now())
RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(
        (SELECT min(d.due_at) FROM sla_daemon.deadlines d WHERE d.due_at > p_after),
        (SELECT min(w.warn_at) FROM sla_daemon.warnings w WHERE w.warn_at > p_after),
        (SELECT min(s.due_at) FROM sla_daemon.level_schedule s WHERE s.due_at > p_after))
$$;

------------------------------------------------------------------------------------------
-- Explain a deadline (sla-daemon sla explain)

CREATE FUNCTION sla_daemon.explain_ticket(p_tracking_number text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    c record;
    k record;
    v_cal integer;
    v_cycle record;
    v_source text;
    v_result jsonb;
BEGIN
    SELECT tk.id, tk.tenant_id, tk.category, tk.status::text AS status, tk.is_sensitive,
           tk.created_at, tk.sla_response_deadline, tk.sla_resolution_deadline,
           tk.tracking_number
    INTO t FROM public.tickets tk WHERE tk.tracking_number = p_tracking_number;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO c FROM sla_daemon.sla_config_for(t.tenant_id, t.category);
    v_cal := sla_daemon.calendar_for(t.tenant_id, t.category);
    SELECT CASE WHEN a.category = '' THEN 'municipality' ELSE 'category' END INTO v_source
    FROM sla_daemon.calendar_assignments a
    WHERE a.municipality_id = t.tenant_id AND a.category IN ('', lower(t.category))
    ORDER BY a.category DESC LIMIT 1;
    SELECT * INTO k FROM sla_daemon.calendars x WHERE x.id = v_cal;
    SELECT * INTO v_cycle FROM sla_daemon.current_cycle(t.id, t.created_at);
    v_result := jsonb_build_object(
        'tracking_number', t.tracking_number,
        'status', t.status,
        'sensitive', t.is_sensitive,
        'created_at', t.created_at,
        'config', jsonb_build_object('response_hours', c.response_hours,
                                     'resolution_hours', c.resolution_hours,
                                     'warning_threshold_pct', c.warning_threshold_pct,
                                     'source', c.source),
        'calendar', CASE WHEN v_cal IS NULL
                         THEN jsonb_build_object('name', '24/7', 'source',
                                                 coalesce(v_source, 'none assigned'))
                         ELSE jsonb_build_object('name', k.name, 'time_zone', k.time_zone,
                                                 'holiday_country', k.holiday_country,
                                                 'source', v_source,
                                                 'built_until', k.built_until) END,
        'cycle', jsonb_build_object('number', v_cycle.cycle, 'started_at', v_cycle.started_at),
        'deadlines', jsonb_build_object(
            'response', jsonb_build_object(
                'deadline', t.sla_response_deadline,
                'business_hours', sla_daemon.business_seconds(v_cal, v_cycle.started_at,
                                                              t.sla_response_deadline) / 3600),
            'resolution', jsonb_build_object(
                'deadline', t.sla_resolution_deadline,
                'business_hours', sla_daemon.business_seconds(v_cal, v_cycle.started_at,
                                                              t.sla_resolution_deadline) / 3600)),
        'closures', coalesce((
            SELECT jsonb_agg(jsonb_build_object('day', x.day, 'name', x.name, 'source', x.source)
                             ORDER BY x.day)
            FROM (SELECT z.day, z.reason AS name, 'calendar' AS source
                  FROM sla_daemon.calendar_closures z WHERE z.calendar_id = v_cal
                  UNION ALL
                  SELECT h.day, h.name,
                         h.source || coalesce(' ' || h.package_version, '')
                  FROM sla_daemon.public_holidays h WHERE h.country = k.holiday_country) x
            WHERE v_cal IS NOT NULL
              AND x.day BETWEEN (v_cycle.started_at AT TIME ZONE k.time_zone)::date
                            AND (coalesce(greatest(t.sla_resolution_deadline,
                                                   t.sla_response_deadline), now())
                                 AT TIME ZONE k.time_zone)::date
              -- only days it would have been open: those are the ones skipped
              AND EXISTS (SELECT 1 FROM sla_daemon.calendar_hours h
                          WHERE h.calendar_id = v_cal
                            AND h.weekday = extract(isodow FROM x.day))), '[]'::jsonb),
        'pauses', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'status', p.status, 'started_at', p.started_at, 'ended_at', p.ended_at,
                       'business_hours', sla_daemon.business_seconds(
                           v_cal, p.started_at, coalesce(p.ended_at, now())) / 3600)
                   ORDER BY p.started_at)
            FROM sla_daemon.pauses p
            WHERE p.ticket_id = t.id AND p.started_at >= v_cycle.started_at), '[]'::jsonb),
        'levels', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'cycle', e.cycle, 'level', coalesce(e.level, 1),
                       'deadline_kind', e.deadline_kind, 'deadline', e.deadline,
                       'at', e.created_at, 'assigned_to', e.details -> 'assigned_to')
                   ORDER BY e.id)
            FROM sla_daemon.events e
            WHERE e.ticket_id = t.id AND e.kind = 'escalation'), '[]'::jsonb),
        'next_level', (SELECT jsonb_build_object('level', s.level, 'due_at', s.due_at)
                       FROM sla_daemon.level_schedule s WHERE s.ticket_id = t.id));
    RETURN v_result;
END
$$;

------------------------------------------------------------------------------------------
-- Grants. Calendar administration is the migration role's (or sla_daemon_owner's): a
-- leaked daemon password cannot declare holidays. The daemon reads the calendars
-- (explain, report) and runs the escalation functions, which read and write levels.

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA sla_daemon FROM PUBLIC;
GRANT SELECT ON sla_daemon.calendars, sla_daemon.calendar_hours, sla_daemon.calendar_closures,
                sla_daemon.public_holidays, sla_daemon.calendar_assignments,
                sla_daemon.calendar_intervals, sla_daemon.pausing_statuses, sla_daemon.cycles,
                sla_daemon.pauses, sla_daemon.escalation_levels
    TO sla_daemon_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_daemon.level_schedule TO sla_daemon_runtime;
GRANT EXECUTE ON FUNCTION
    sla_daemon.odometer(integer, timestamptz),
    sla_daemon.business_at(integer, double precision),
    sla_daemon.calendar_for(uuid, text),
    sla_daemon.business_add(integer, timestamptz, double precision),
    sla_daemon.business_seconds(integer, timestamptz, timestamptz),
    sla_daemon.compute_deadlines(uuid, text, timestamptz, boolean),
    sla_daemon.current_cycle(uuid, timestamptz),
    sla_daemon.paused_seconds(uuid, integer, timestamptz),
    sla_daemon.ticket_warnings(uuid, uuid, text, timestamptz, timestamptz, timestamptz),
    sla_daemon.level_due(uuid, text, timestamptz, smallint),
    sla_daemon.next_level(uuid, text, smallint),
    sla_daemon.schedule_next_level(uuid, uuid, text, integer, smallint, timestamptz),
    sla_daemon.escalate_levels(uuid),
    sla_daemon.level_failed(uuid, text),
    sla_daemon.explain_ticket(text)
    TO sla_daemon_runtime;
