-- Health you can SELECT: each proxy instance keeps its view of every worker here, and the
-- view `worker_health` sums the fresh views per worker.
--
-- Written by each instance's status reporter (src/db/status.rs): all its rows in one
-- statement every `[status] interval`, and the changed ones at once on a transition (health,
-- ejection, drain, a drained worker's last request ending), rate-limited. An instance
-- deletes its rows on a clean shutdown; a crashed one's rows stop being fresh after three of
-- its intervals, and the view ignores them.
--
-- Columns beyond the issue's contract: `drained` and `weight` (as this instance applies
-- them, so `load_balancer workers drain --wait` knows the instance has seen the weight 0
-- before it trusts its in_flight of 0), and `interval_ms` (this instance's interval, so
-- freshness is judged by the writer's own cadence, whatever the others use).
CREATE TABLE worker_status (
    instance       text        NOT NULL,
    worker_id      bigint      NOT NULL,
    pool           text        NOT NULL,
    worker_address text        NOT NULL,
    healthy        bool        NOT NULL,
    ejected        bool        NOT NULL,
    in_flight      int         NOT NULL,
    requests       bigint      NOT NULL,
    failures       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    drained        bool        NOT NULL DEFAULT false,
    weight         int         NOT NULL,
    interval_ms    int         NOT NULL CHECK (interval_ms > 0),
    PRIMARY KEY (instance, worker_id)
-- Every row is rewritten every interval without touching an indexed column: free room on its
-- page lets each rewrite be a HOT update (no new index entries), and the page prunes the old
-- versions itself, without waiting for vacuum.
) WITH (fillfactor = 50);

-- Per worker: the view's join, the drain confirmation's poll, the forgetting below.
CREATE INDEX worker_status_worker ON worker_status (worker_id);

-- A deleted worker's rows go at once, from every instance (a dead one's too); an instance
-- that raced the delete with a write removes its row at its next interval. One statement
-- per DELETE, not one per row: a 10,000-row DELETE pays one join.
CREATE FUNCTION worker_status_forget_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM worker_status s USING gone WHERE s.worker_id = gone.id;
    RETURN NULL;
END $$;

CREATE TRIGGER worker_status_forget_deleted
    AFTER DELETE ON workers REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION worker_status_forget_deleted();

-- TRUNCATE fires no DELETE trigger (and has no transition table).
CREATE FUNCTION worker_status_forget_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM worker_status;
    RETURN NULL;
END $$;

CREATE TRIGGER worker_status_forget_all
    AFTER TRUNCATE ON workers
    FOR EACH STATEMENT EXECUTE FUNCTION worker_status_forget_all();

-- Per worker of `workers` (so one no instance reports yet still shows, with 0 instances):
-- how many fresh instances (their row written within 3 of their intervals) report it, how
-- many see it healthy and how many have ejected it, which see it unhealthy, and the requests
-- in flight on it summed over them.
CREATE VIEW worker_health AS
SELECT w.id AS worker_id,
       w.pool,
       w.worker_address,
       w.weight,
       count(s.instance) AS instances,
       count(s.instance) FILTER (WHERE s.healthy) AS healthy_instances,
       count(s.instance) FILTER (WHERE s.ejected) AS ejected_instances,
       coalesce(array_agg(s.instance ORDER BY s.instance) FILTER (WHERE NOT s.healthy),
                '{}') AS unhealthy_on,
       coalesce(sum(s.in_flight), 0) AS in_flight,
       max(s.updated_at) AS updated_at
FROM workers w
LEFT JOIN worker_status s
       ON s.worker_id = w.id
      AND s.updated_at > now() - 3 * s.interval_ms * interval '1 millisecond'
GROUP BY w.id;
