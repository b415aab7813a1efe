-- Routes: which pool serves a request, by the listener it came in on, its host and its path.
-- Operators edit this table with plain SQL, as they do `workers`; every proxy instance
-- follows it live. Bad rows are refused here, by the database, never by a crashing proxy.
--
-- Precedence (see src/ring/routes.rs): an exact host, then the longest matching `*.suffix`,
-- then routes for any host (host IS NULL); within one of those the longest path_prefix
-- (byte-wise), then the highest priority, then a route naming the listener over one for
-- every listener (listener IS NULL), then the lowest id.
CREATE SEQUENCE routes_version_seq;

CREATE TABLE routes (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Lower-case DNS name, or `*.` and one: any name below it (at any depth, not itself).
    -- NULL: any host.
    host        text    NULL,
    path_prefix text    NOT NULL DEFAULT '/',
    -- The pool of workers (`workers.pool`) that serves what matches.
    pool        text    NOT NULL,
    priority    integer NOT NULL DEFAULT 0,
    -- A `[[listeners]] name`; NULL: every listener.
    listener    text    NULL,
    -- As `workers.version`: bumped by a trigger on every change, from a sequence of its own,
    -- so (id, version) orders the events of one row.
    version     bigint  NOT NULL DEFAULT 0,

    -- The name without its `*.` is at most 253 characters (a DNS name's limit); labels
    -- start and end with a letter or digit.
    CONSTRAINT routes_host_dns_name CHECK (
        host IS NULL OR (
            length(host) - CASE WHEN host LIKE '*.%' THEN 2 ELSE 0 END <= 253
            AND host ~ '^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'
        )
    ),
    -- What a request-target's path can start with: no query or fragment, no space or
    -- control character (a path with those never reaches a lookup).
    CONSTRAINT routes_path_prefix_path CHECK (
        octet_length(path_prefix) <= 1024
        AND path_prefix ~ '^/[^\x01-\x1f\x7f ?#]*$'
    ),
    CONSTRAINT routes_pool_not_empty CHECK (length(pool) BETWEEN 1 AND 200),
    CONSTRAINT routes_listener_name CHECK (
        listener IS NULL OR listener ~ '^[A-Za-z0-9._-]{1,200}$'
    )
);

-- Change events, on the channel of `workers` (V2) so that one transaction changing both
-- tables reaches a listener as one ordered stream and is published as one ring:
--   {"table":"routes","op":"INSERT"|"UPDATE"|"DELETE","id":..,"version":..,
--    "host":..|null,"path_prefix":..,"pool":..,"priority":..,"listener":..|null}
--     UPDATE adds "prev": the version before; a listener that knows an older one lost an event
--   {"op":"END","seq":..}       after each statement, as for workers (same sequence)
--   {"op":"TRUNCATE","seq":..}  TRUNCATE fires no row trigger: listeners resync both tables
-- A payload without "table" is a workers event (V2's triggers send none). Payloads stay
-- far below the 8000-byte limit, JSON escaping included: host ≤ 255 bytes, path_prefix ≤
-- 2048 (1024 bytes, of which only `"` and `\` need escaping), pool ≤ 1200 (200 characters,
-- a control character escaping to 6 bytes), listener ≤ 200.
CREATE FUNCTION routes_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('routes_version_seq');
    RETURN NEW;
END $$;

CREATE TRIGGER routes_bump_version
    BEFORE INSERT OR UPDATE ON routes
    FOR EACH ROW EXECUTE FUNCTION routes_bump_version();

CREATE FUNCTION routes_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r routes;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    payload := jsonb_build_object(
        'table', 'routes', 'op', TG_OP, 'id', r.id, 'version', r.version,
        'host', r.host, 'path_prefix', r.path_prefix, 'pool', r.pool,
        'priority', r.priority, 'listener', r.listener);
    IF TG_OP = 'UPDATE' THEN
        payload := payload || jsonb_build_object('prev', OLD.version);
    END IF;
    PERFORM pg_notify('lb_workers', payload::text);
    RETURN NULL;
END $$;

CREATE TRIGGER routes_notify_row
    AFTER INSERT OR UPDATE OR DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION routes_notify_row();

-- The END/TRUNCATE marker is the one workers send (same function, same sequence): the
-- subscriber batches statements by it whatever table they touched.
CREATE TRIGGER routes_notify_statement
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION workers_notify_statement();
