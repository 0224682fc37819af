-- kexec audit trail, version 1.
--
-- Applied by kexec.adapters.audit.postgres.migrate() inside one transaction that
-- holds pg_advisory_xact_lock, so replicas starting together cannot race.
-- Never edit an applied migration: add 0002_*.sql instead (migrate() checks a
-- checksum and refuses to run when an applied file changed).

-- One row per execution (keyed by the Kubernetes object's uid), upserted on
-- every transition. last_seq is the seq of the newest transition the row
-- reflects; the upsert only overwrites a row whose last_seq is <= the incoming
-- one, so a late, re-sent older snapshot never moves a row backwards.
CREATE TABLE kubernetes_execution_audit (
    execution_uid       text        PRIMARY KEY,
    name                text        NOT NULL,
    namespace           text        NOT NULL,
    workflow_name       text        NOT NULL DEFAULT '',
    workflow_namespace  text        NOT NULL DEFAULT '',
    step_number         integer,
    action              text        NOT NULL,
    parameters          jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- redacted by the caller
    target_namespace    text        NOT NULL DEFAULT '',
    target_kind         text        NOT NULL DEFAULT '',
    target_name         text        NOT NULL DEFAULT '',
    phase               text        NOT NULL,
    success             boolean,                                   -- NULL while not terminal
    reason              text        NOT NULL DEFAULT '',
    message             text        NOT NULL DEFAULT '',
    started_at          timestamptz,
    completed_at        timestamptz,
    duration_ms         bigint GENERATED ALWAYS AS
                            ((EXTRACT(EPOCH FROM (completed_at - started_at)) * 1000)::bigint) STORED,
    job_name            text        NOT NULL DEFAULT '',
    pod_name            text        NOT NULL DEFAULT '',
    exit_code           integer,
    attempts            integer     NOT NULL DEFAULT 0,
    max_retries         integer     NOT NULL DEFAULT 0,
    dry_run             boolean     NOT NULL DEFAULT false,
    policy_decision     jsonb,
    dry_run_result      jsonb,
    rollback            jsonb,
    rollback_of         text        NOT NULL DEFAULT '',
    extra               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL,                      -- the object's creationTimestamp
    updated_at          timestamptz NOT NULL DEFAULT now(),        -- last time the row was written
    last_seq            integer     NOT NULL DEFAULT -1            -- newest transition reflected
) WITH (fillfactor = 70);  -- room for HOT updates: a row is rewritten ~6 times in minutes

-- `kexec audit` queries: newest first, optionally filtered.
CREATE INDEX kubernetes_execution_audit_created_idx
    ON kubernetes_execution_audit (created_at DESC);
CREATE INDEX kubernetes_execution_audit_name_idx
    ON kubernetes_execution_audit (name, namespace, created_at DESC);
CREATE INDEX kubernetes_execution_audit_namespace_idx
    ON kubernetes_execution_audit (namespace, created_at DESC);
CREATE INDEX kubernetes_execution_audit_action_idx
    ON kubernetes_execution_audit (action, created_at DESC);
CREATE INDEX kubernetes_execution_audit_success_idx
    ON kubernetes_execution_audit (success, created_at DESC);

-- Append-only history: one row per phase transition, exactly once per
-- (execution_uid, seq). Writers insert with ON CONFLICT DO NOTHING.
CREATE TABLE kubernetes_execution_audit_events (
    execution_uid   text        NOT NULL
                    REFERENCES kubernetes_execution_audit (execution_uid) ON DELETE CASCADE,
    seq             integer     NOT NULL CHECK (seq >= 0),
    time            timestamptz NOT NULL,
    from_phase      text        NOT NULL DEFAULT '',
    to_phase        text        NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    message         text        NOT NULL DEFAULT '',
    controller      text        NOT NULL DEFAULT '',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kubernetes_execution_audit_events_pkey PRIMARY KEY (execution_uid, seq)
);

-- Deletion is allowed only inside prune_audit(), which sets this transaction-local
-- flag. The trigger guards against accidents by anyone (including the owner);
-- against a hostile application role the grants are the boundary: give it
-- SELECT, INSERT on the events table, SELECT, INSERT, UPDATE on the executions
-- table and EXECUTE on prune_audit, nothing else (docs/audit.md).
CREATE FUNCTION kexec_audit_prune_in_progress() RETURNS boolean
    LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('kexec.audit_prune', true), '') = 'on' $$;

CREATE FUNCTION kexec_audit_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'DELETE' AND kexec_audit_prune_in_progress() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'kexec audit: % on % is not allowed (append-only; use prune_audit())',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER kubernetes_execution_audit_events_append_only
    BEFORE UPDATE OR DELETE ON kubernetes_execution_audit_events
    FOR EACH ROW EXECUTE FUNCTION kexec_audit_events_append_only();

CREATE TRIGGER kubernetes_execution_audit_events_no_truncate
    BEFORE TRUNCATE ON kubernetes_execution_audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION kexec_audit_events_append_only();

-- Execution rows are updated by the upsert, but never deleted outside retention.
CREATE TRIGGER kubernetes_execution_audit_no_delete
    BEFORE DELETE ON kubernetes_execution_audit
    FOR EACH ROW EXECUTE FUNCTION kexec_audit_events_append_only();

CREATE TRIGGER kubernetes_execution_audit_no_truncate
    BEFORE TRUNCATE ON kubernetes_execution_audit
    FOR EACH STATEMENT EXECUTE FUNCTION kexec_audit_events_append_only();

-- Retention: delete executions created before now() - older_than, with all
-- their events (by cascade). Refuses windows shorter than one day, so a typo
-- cannot wipe the recent trail. Run it daily (docs/audit.md).
CREATE FUNCTION prune_audit(older_than interval)
    RETURNS TABLE (executions bigint, events bigint)
    LANGUAGE plpgsql AS
$$
DECLARE
    cutoff timestamptz := now() - older_than;
    n_exec bigint;
    n_events bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '1 day' THEN
        RAISE EXCEPTION 'prune_audit: retention must be at least 1 day (got %)', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('kexec.audit_prune', 'on', true);
    -- Lock the doomed rows first: a concurrent upsert of the same uid waits.
    PERFORM 1 FROM kubernetes_execution_audit WHERE created_at < cutoff FOR UPDATE;
    SELECT count(*) INTO n_events
        FROM kubernetes_execution_audit_events e
        JOIN kubernetes_execution_audit a USING (execution_uid)
        WHERE a.created_at < cutoff;
    DELETE FROM kubernetes_execution_audit WHERE created_at < cutoff;
    GET DIAGNOSTICS n_exec = ROW_COUNT;
    PERFORM set_config('kexec.audit_prune', 'off', true);
    RETURN QUERY SELECT n_exec, n_events;
END
$$;
