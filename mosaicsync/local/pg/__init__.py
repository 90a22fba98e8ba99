"""PostgreSQL for the local platform: the embedded server, tenant databases, the SQL endpoint."""
