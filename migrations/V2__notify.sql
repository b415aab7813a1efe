-- Change events for the proxies' listener task.
--
-- Channel `lb_workers`, one JSON payload per event:
--   {"op":"INSERT"|"UPDATE"|"DELETE","id":..,"version":..,"address":..,"weight":..,"pool":..}
--     UPDATE adds "prev": the version before; a listener that knows an older one lost an event
--   {"op":"END","seq":..}       after each statement: the listener publishes one ring per batch
--   {"op":"TRUNCATE","seq":..}  TRUNCATE fires no row trigger: listeners resync from the table
-- Payloads differ (id + version, or seq) because PostgreSQL merges identical payloads sent in
-- one transaction. They stay far below the 8000-byte limit: the address is at most 255 bytes
-- and the pool 200.
CREATE SEQUENCE workers_event_seq;

CREATE FUNCTION workers_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('workers_version_seq');
    RETURN NEW;
END $$;

CREATE TRIGGER workers_bump_version
    BEFORE INSERT OR UPDATE ON workers
    FOR EACH ROW EXECUTE FUNCTION workers_bump_version();

CREATE FUNCTION workers_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r workers;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    payload := jsonb_build_object(
        'op', TG_OP, 'id', r.id, 'version', r.version,
        'address', r.worker_address, 'weight', r.weight, 'pool', r.pool);
    IF TG_OP = 'UPDATE' THEN
        payload := payload || jsonb_build_object('prev', OLD.version);
    END IF;
    PERFORM pg_notify('lb_workers', payload::text);
    RETURN NULL;
END $$;

CREATE TRIGGER workers_notify_row
    AFTER INSERT OR UPDATE OR DELETE ON workers
    FOR EACH ROW EXECUTE FUNCTION workers_notify_row();

-- Row triggers fire before statement triggers, so END follows the statement's row events.
CREATE FUNCTION workers_notify_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lb_workers', json_build_object(
        'op', CASE WHEN TG_OP = 'TRUNCATE' THEN 'TRUNCATE' ELSE 'END' END,
        'seq', nextval('workers_event_seq'))::text);
    RETURN NULL;
END $$;

CREATE TRIGGER workers_notify_statement
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON workers
    FOR EACH STATEMENT EXECUTE FUNCTION workers_notify_statement();
