-- The backend registry. Operators edit this table with plain SQL; every proxy instance
-- follows it live. Bad rows are refused here, by the database, never by a crashing proxy.
CREATE SEQUENCE workers_version_seq;

CREATE TABLE workers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_address text    NOT NULL,
    weight         integer NOT NULL DEFAULT 1,
    pool           text    NOT NULL DEFAULT 'default',
    -- Bumped by a trigger on every change, from one sequence, so (id, version) is unique
    -- forever and orders the events of one row (a row lock serialises its writers).
    version        bigint  NOT NULL DEFAULT 0,

    CONSTRAINT workers_address_unique_per_pool UNIQUE (pool, worker_address),
    CONSTRAINT workers_weight_range CHECK (weight BETWEEN 0 AND 10000),
    CONSTRAINT workers_pool_not_empty CHECK (length(pool) BETWEEN 1 AND 200),
    -- host:port, or [ipv6]:port; the port in 1..=65535, no leading zeros.
    CONSTRAINT workers_address_host_port CHECK (
        length(worker_address) <= 255
        AND worker_address ~ '^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[1-9][0-9]{0,4}$'
        AND split_part(worker_address, ':', -1)::integer BETWEEN 1 AND 65535
    )
);
