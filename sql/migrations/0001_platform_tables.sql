-- The platform's own tables, as its ORM creates them. On a platform database they
-- already exist and nothing here touches them: every statement is "if missing".
-- Demo and test databases get them from here.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'ticket_status' AND n.nspname = 'public') THEN
        CREATE TYPE public.ticket_status AS ENUM ('open', 'in_progress', 'escalated', 'resolved', 'closed');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.municipalities (
    id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS public.users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone              text,
    preferred_language text DEFAULT 'en'
);

CREATE TABLE IF NOT EXISTS public.teams (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES public.municipalities (id),
    name       text NOT NULL,
    manager_id uuid REFERENCES public.users (id)
);

CREATE TABLE IF NOT EXISTS public.tickets (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid NOT NULL REFERENCES public.municipalities (id),
    tracking_number         text NOT NULL UNIQUE,
    user_id                 uuid REFERENCES public.users (id),
    category                text NOT NULL,
    status                  public.ticket_status NOT NULL DEFAULT 'open',
    is_sensitive            boolean NOT NULL DEFAULT false,
    assigned_team_id        uuid REFERENCES public.teams (id),
    assigned_to             uuid REFERENCES public.users (id),
    created_at              timestamptz NOT NULL DEFAULT now(),
    sla_response_deadline   timestamptz,
    sla_resolution_deadline timestamptz,
    escalated_at            timestamptz,
    escalation_reason       text
);

CREATE TABLE IF NOT EXISTS public.ticket_assignments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id        uuid NOT NULL REFERENCES public.tickets (id) ON DELETE CASCADE,
    assigned_to      uuid REFERENCES public.users (id),
    assigned_team_id uuid REFERENCES public.teams (id),
    reason           text,
    is_active        boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.sla_configs (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    municipality_id       uuid NOT NULL REFERENCES public.municipalities (id),
    category              text,
    response_hours        numeric NOT NULL,
    resolution_hours      numeric NOT NULL,
    warning_threshold_pct integer NOT NULL DEFAULT 80,
    is_active             boolean NOT NULL DEFAULT true
);
