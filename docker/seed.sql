-- Demo backends for docker compose. Runs once the proxy has created the workers table.
INSERT INTO workers(worker_address, weight) VALUES
    ('backend-1:8000', 3),
    ('backend-2:8000', 1),
    ('backend-3:8000', 1)
ON CONFLICT (pool, worker_address) DO NOTHING;
