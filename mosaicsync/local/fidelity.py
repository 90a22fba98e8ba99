"""Where the local platform differs from Mosaic: one list, for `/_local/info` and the README."""

from __future__ import annotations

GAPS: list[tuple[str, str]] = [
    (
        "PostgreSQL version",
        "Local runs PostgreSQL 18.6 (embedded) or whatever --database-url / --pg-bin gives; "
        "Mosaic does not publish its version, so SQL that needs PostgreSQL 18 may fail there.",
    ),
    (
        "Extensions",
        "With the embedded server pgvector is real, but uuid-ossp and pgcrypto are SQL shims: "
        "uuid_generate_v3/v4, digest, hmac, gen_random_bytes and gen_random_uuid are exact; "
        "uuid_generate_v1/v5, crypt, gen_salt and pgp_* raise feature_not_supported. "
        "Use --database-url or --pg-bin for a server with the real ones.",
    ),
    (
        "No TLS",
        "HTTP and PostgreSQL are plaintext on loopback; the embedded server has no OpenSSL, so "
        "sslmode=require fails (libpq's default sslmode=prefer works).",
    ),
    (
        "Catalog visibility",
        "A project's role can read other projects' database and role names in pg_database and "
        "pg_roles (never their data); Mosaic's behaviour is unknown.",
    ),
    (
        "SQL endpoint semantics",
        "Several statements in one query run as one implicit transaction and the response is the "
        "last statement's result; the JSON type mapping, the statement timeout, the row and "
        "byte caps and the cut of long error text are local choices, not documented Mosaic "
        "behaviour.",
    ),
    (
        "Emails are never sent",
        "Magic-link emails land in the local outbox (/_local/ and /_local/outbox); their text "
        "and branding differ from Mosaic's.",
    ),
    (
        "Magic-link verification",
        "The link points at the local platform (/auth/verify), which redirects to "
        "{site}{redirect_url}?token=...&email=... (any #fragment after the query); Mosaic "
        "documents no verify API, so treat the token the same way on both.",
    ),
    (
        "Storage URLs",
        "Upload and object URLs point at the local server (/_storage/...) and use a different "
        "signature scheme; treat upload_url as opaque.",
    ),
    (
        "Quota and usage strings",
        "Usage is computed locally in decimal units (1 GB = 10^9 bytes); Mosaic's rounding and "
        "units are a guess.",
    ),
    (
        "Rate limits",
        "Requests per key per second and magic-link emails per project per UTC day are "
        "approximations with configurable values (--rate-limit, --emails-per-day).",
    ),
    (
        "Host names",
        "*.localhost resolves in browsers and curl >= 7.85, not in Python's or Node's resolvers; "
        "use http://127.0.0.1:PORT/sites/{id}/ or send a Host header there. Root-absolute links "
        "(/app.js) only work on the {id}.localhost address.",
    ),
    (
        "Provisioning time",
        "A project is ready in milliseconds locally (--provision-delay slows it); on Mosaic it "
        "takes longer, so always poll until status is running.",
    ),
    (
        "Caching",
        "Sites are served with ETag and 'Cache-Control: public, max-age=0, must-revalidate'; "
        "Mosaic's CDN behaviour is not documented.",
    ),
    (
        "Project ids",
        "Same shape (word-xxx), different generator; never assume an id is free or stable "
        "across platforms.",
    ),
    (
        "Key rotation",
        "A generated local key expires after 30 days of the local clock (--key-ttl-days); "
        "restarting the platform then prints a new one. Keys given with --api-key never expire.",
    ),
    (
        "Sandboxed path route",
        "Pages under /sites/{id}/ share the host 127.0.0.1:PORT with the platform's own pages, "
        "so they are served with 'Content-Security-Policy: sandbox allow-scripts allow-forms "
        "allow-popups allow-modals': scripts run in an opaque origin, without cookies or "
        "localStorage; {id}.localhost gives each site its own origin, unsandboxed.",
    ),
    (
        "Storage content types",
        "Storage objects are served with 'X-Content-Type-Options: nosniff' and "
        "'Content-Security-Policy: sandbox'; only images (not SVG), audio, video, fonts, plain "
        "text, CSV and JSON are shown inline, any other type (HTML, SVG, ...) is a download "
        "(Content-Disposition: attachment). Mosaic's serving of objects is not documented.",
    ),
    (
        "Per-account caps",
        "20 projects per account (403 beyond) and 10 SQL endpoint connections per account at "
        "once (429 beyond, after a 5 s wait) are local choices (--projects-per-account, "
        "--connections-per-account, --connection-wait); Mosaic's own caps are not documented.",
    ),
    (
        "Range requests on storage",
        "Storage objects answer a 'Range: bytes=a-b' request with 206 and that slice (one range "
        "per request; rollback reads history packs this way). Mosaic's storage is assumed to "
        "honour Range as S3 does; where it sends the whole object (200), the client takes its "
        "slice from that.",
    ),
    (
        "Name lengths",
        'A file or folder name (one segment between "/") of a site file or storage object is at '
        "most 255 bytes of UTF-8, the limit of the filesystem the local platform stores them on "
        "(400 past it; the client refuses such a name before sending). Mosaic documents no limit "
        "on a segment, only paths (1,024 characters, our reading).",
    ),
]


def gaps_json() -> list[dict[str, str]]:
    return [{"title": title, "detail": detail} for title, detail in GAPS]
