-- The Todo example's table. `mosaicsync deploy` (or `mosaicsync migrate up`) applies the files in
-- this folder in version order.
CREATE TABLE todos (
    id SERIAL PRIMARY KEY,
    task TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
