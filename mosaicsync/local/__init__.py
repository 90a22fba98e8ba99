"""The local Mosaic platform: a real HTTP server over real PostgreSQL."""
