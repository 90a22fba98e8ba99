-- pgcrypto 1.3 in SQL for PostgreSQL builds without OpenSSL (mosaicsync local).
-- Exact: digest() and hmac() for md5/sha224/sha256/sha384/sha512, gen_random_bytes(),
-- gen_random_uuid(). Everything else keeps its real signature and raises
-- feature_not_supported, so code that needs it fails loudly instead of differently.

\echo Use "CREATE EXTENSION pgcrypto" to load this file. \quit

CREATE FUNCTION digest(bytea, text) RETURNS bytea
AS $$
BEGIN
  CASE pg_catalog.lower($2)
    WHEN 'md5' THEN RETURN pg_catalog.decode(pg_catalog.md5($1), 'hex');
    WHEN 'sha224' THEN RETURN pg_catalog.sha224($1);
    WHEN 'sha256' THEN RETURN pg_catalog.sha256($1);
    WHEN 'sha384' THEN RETURN pg_catalog.sha384($1);
    WHEN 'sha512' THEN RETURN pg_catalog.sha512($1);
    WHEN 'sha1' THEN
      RAISE EXCEPTION 'digest() with sha1 is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
        USING ERRCODE = 'feature_not_supported',
              HINT = 'md5, sha224, sha256, sha384 and sha512 work here.';
    ELSE
      RAISE EXCEPTION 'Cannot use "%": No such hash algorithm', $2
        USING ERRCODE = 'external_routine_invocation_exception';
  END CASE;
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

-- Text is hashed as its bytes in the database encoding, which is UTF-8 on this platform.
CREATE FUNCTION digest(text, text) RETURNS bytea
AS $$ SELECT @extschema@.digest(pg_catalog.convert_to($1, 'UTF8'), $2) $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

-- RFC 2104: H((K' xor opad) || H((K' xor ipad) || data)), where K' is the key, hashed first
-- when longer than the block (64 bytes for md5 and sha224/256, 128 for sha384/512) and then
-- zero-padded to the block.
CREATE FUNCTION hmac(bytea, bytea, text) RETURNS bytea
AS $$
DECLARE
  algo text := pg_catalog.lower($3);
  block int := CASE WHEN algo IN ('sha384', 'sha512') THEN 128 ELSE 64 END;
  k bytea := $2;
  ipad bytea;
  opad bytea;
BEGIN
  IF pg_catalog.length(k) > block THEN
    k := @extschema@.digest(k, algo);
  END IF;
  k := k || pg_catalog.decode(pg_catalog.repeat('00', block - pg_catalog.length(k)), 'hex');
  ipad := k;
  opad := k;
  FOR i IN 0 .. block - 1 LOOP
    ipad := pg_catalog.set_byte(ipad, i, pg_catalog.get_byte(k, i) # 54);
    opad := pg_catalog.set_byte(opad, i, pg_catalog.get_byte(k, i) # 92);
  END LOOP;
  RETURN @extschema@.digest(opad || @extschema@.digest(ipad || $1, algo), algo);
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hmac(text, text, text) RETURNS bytea
AS $$
  SELECT @extschema@.hmac(pg_catalog.convert_to($1, 'UTF8'), pg_catalog.convert_to($2, 'UTF8'), $3)
$$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE;

-- Cryptographically strong bytes from the server's strong random source, taken from
-- gen_random_uuid() while skipping the 6 fixed version and variant bits (14 bytes per UUID).
CREATE FUNCTION gen_random_bytes(integer) RETURNS bytea
AS $$
DECLARE
  result bytea := '';
  u bytea;
BEGIN
  IF $1 < 1 OR $1 > 1024 THEN
    RAISE EXCEPTION 'Length not in range' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WHILE pg_catalog.length(result) < $1 LOOP
    u := pg_catalog.uuid_send(pg_catalog.gen_random_uuid());
    result := result || pg_catalog.substr(u, 1, 6) || pg_catalog.substr(u, 8, 1)
                     || pg_catalog.substr(u, 10, 7);
  END LOOP;
  RETURN pg_catalog.substr(result, 1, $1);
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION gen_random_uuid() RETURNS uuid
AS $$ SELECT pg_catalog.gen_random_uuid() $$
LANGUAGE sql VOLATILE PARALLEL SAFE;

-- Not available without OpenSSL.

CREATE FUNCTION crypt(text, text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'crypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION gen_salt(text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'gen_salt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION gen_salt(text, integer) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'gen_salt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION encrypt(bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'encrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION decrypt(bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION encrypt_iv(bytea, bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'encrypt_iv() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION decrypt_iv(bytea, bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'decrypt_iv() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_encrypt(text, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_encrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_encrypt(text, text, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_encrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_encrypt_bytea(bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_encrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_encrypt_bytea(bytea, text, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_encrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_decrypt(bytea, text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_decrypt(bytea, text, text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_decrypt_bytea(bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_decrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_sym_decrypt_bytea(bytea, text, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_sym_decrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_encrypt(text, bytea) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_encrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_encrypt(text, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_encrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_encrypt_bytea(bytea, bytea) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_encrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_encrypt_bytea(bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_encrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt(bytea, bytea) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt(bytea, bytea, text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt(bytea, bytea, text, text) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt_bytea(bytea, bytea) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt_bytea(bytea, bytea, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_pub_decrypt_bytea(bytea, bytea, text, text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_pub_decrypt_bytea() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_key_id(bytea) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_key_id() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION armor(bytea) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'armor() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION armor(bytea, text[], text[]) RETURNS text
AS $$
BEGIN
  RAISE EXCEPTION 'armor() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION dearmor(text) RETURNS bytea
AS $$
BEGIN
  RAISE EXCEPTION 'dearmor() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION pgp_armor_headers(text, key OUT text, value OUT text) RETURNS SETOF record
AS $$
BEGIN
  RAISE EXCEPTION 'pgp_armor_headers() is not available on the embedded PostgreSQL of mosaicsync local (built without OpenSSL); run "mosaicsync local --database-url <url>" with a server that has the pgcrypto extension, or --pg-bin'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Only digest(), hmac(), gen_random_bytes() and gen_random_uuid() are available here.';
END
$$
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;
