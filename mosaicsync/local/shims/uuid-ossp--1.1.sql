-- uuid-ossp 1.1 in SQL for PostgreSQL builds without a UUID library (mosaicsync local).
-- Same function names and signatures as the contrib module.

\echo Use "CREATE EXTENSION ""uuid-ossp""" to load this file. \quit

CREATE FUNCTION uuid_nil() RETURNS uuid
AS $$ SELECT '00000000-0000-0000-0000-000000000000'::pg_catalog.uuid $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_ns_dns() RETURNS uuid
AS $$ SELECT '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::pg_catalog.uuid $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_ns_url() RETURNS uuid
AS $$ SELECT '6ba7b811-9dad-11d1-80b4-00c04fd430c8'::pg_catalog.uuid $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_ns_oid() RETURNS uuid
AS $$ SELECT '6ba7b812-9dad-11d1-80b4-00c04fd430c8'::pg_catalog.uuid $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_ns_x500() RETURNS uuid
AS $$ SELECT '6ba7b814-9dad-11d1-80b4-00c04fd430c8'::pg_catalog.uuid $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_generate_v4() RETURNS uuid
AS $$ SELECT pg_catalog.gen_random_uuid() $$
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE;

-- RFC 4122 version 3: MD5 of the namespace bytes and the name, then the version nibble (3)
-- and the variant bits (10xx). The name is hashed as UTF-8, the encoding of every database
-- the platform creates, which is what the C module hashes there too.
CREATE FUNCTION uuid_generate_v3(namespace uuid, name text) RETURNS uuid
AS $$
  SELECT pg_catalog.encode(
           pg_catalog.set_byte(
             pg_catalog.set_byte(h, 6, (pg_catalog.get_byte(h, 6) & 15) | 48),
             8, (pg_catalog.get_byte(h, 8) & 63) | 128),
           'hex')::pg_catalog.uuid
  FROM (SELECT pg_catalog.decode(
                 pg_catalog.md5(pg_catalog.uuid_send(namespace)
                                OPERATOR(pg_catalog.||) pg_catalog.convert_to(name, 'UTF8')),
                 'hex') AS h) AS digest
$$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_generate_v1() RETURNS uuid
AS $$
BEGIN
  RAISE EXCEPTION 'uuid_generate_v1() is not available on the embedded PostgreSQL of mosaicsync local (built without a UUID library); run "mosaicsync local --database-url <url>" with a server that has the uuid-ossp extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'uuid_generate_v4() and gen_random_uuid() work everywhere.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_generate_v1mc() RETURNS uuid
AS $$
BEGIN
  RAISE EXCEPTION 'uuid_generate_v1mc() is not available on the embedded PostgreSQL of mosaicsync local (built without a UUID library); run "mosaicsync local --database-url <url>" with a server that has the uuid-ossp extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'uuid_generate_v4() and gen_random_uuid() work everywhere.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION uuid_generate_v5(namespace uuid, name text) RETURNS uuid
AS $$
BEGIN
  RAISE EXCEPTION 'uuid_generate_v5() is not available on the embedded PostgreSQL of mosaicsync local (it needs SHA-1, which this build lacks); run "mosaicsync local --database-url <url>" with a server that has the uuid-ossp extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'uuid_generate_v3() is exact here, and uuid_generate_v4() works everywhere.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;
