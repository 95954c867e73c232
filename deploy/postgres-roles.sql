-- PostgreSQL roles and database for SoundForge. Run once, as a superuser, with psql:
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -f deploy/postgres-roles.sql
--
-- then set the passwords (psql hashes them itself: nothing in shell history or server logs):
--
--   sudo -u postgres psql -c '\password soundforge_owner' -c '\password soundforge_app'
--
-- Running it again is harmless (it creates what is missing and re-applies the grants).
--
-- Three roles:
--   soundforge_owner     owns the database and every object in it; the only role that runs
--                        `soundforge migrate` (the unit's ExecStartPre, through
--                        SOUNDFORGE_MIGRATION_DATABASE_URL). Creating pg_trgm needs no
--                        superuser: it is a trusted extension and this role owns the database.
--   soundforge_app       what the daemon and the CLI connect as (DATABASE_URL): reads and
--                        writes rows, calls Procrastinate's functions, LISTENs; cannot create,
--                        alter, drop or truncate anything, so a bug or an injected statement in
--                        the daemon cannot change the schema.
--   soundforge_readonly  for people and dashboards: SELECT on the soundforge_* inspection views
--                        (granted by deploy/postgres-grants.sql after migrations) and
--                        LISTEN soundforge_progress; no table, no write.
--
-- The application role's rights on tables that migrations create later come from default
-- privileges of soundforge_owner (below), so an upgrade needs no grant step for the daemon.
-- The read-only role's view grants do need one (a default privilege cannot tell a view from a
-- table): run deploy/postgres-grants.sql after the first start and after each upgrade.
--
-- Optional psql variables (-v name=value): dbname, owner_role, app_role, readonly_role (the
-- names above, and `soundforge`), and owner_password, app_password, readonly_password to set
-- passwords here instead of with \password (they then show in `ps` and shell history).

\set ON_ERROR_STOP on

\if :{?dbname}
\else
    \set dbname soundforge
\endif
\if :{?owner_role}
\else
    \set owner_role soundforge_owner
\endif
\if :{?app_role}
\else
    \set app_role soundforge_app
\endif
\if :{?readonly_role}
\else
    \set readonly_role soundforge_readonly
\endif

-- Roles: log in, nothing else (no superuser, createdb, createrole, replication, bypassrls).
SELECT format('CREATE ROLE %I', name)
FROM unnest(ARRAY[:'owner_role', :'app_role', :'readonly_role']) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)
\gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS INHERIT', name)
FROM unnest(ARRAY[:'owner_role', :'app_role', :'readonly_role']) AS name
\gexec
-- A read-only session starts read-only too (the grants below are what actually enforce it).
ALTER ROLE :"readonly_role" SET default_transaction_read_only = on;

\if :{?owner_password}
    ALTER ROLE :"owner_role" PASSWORD :'owner_password';
\endif
\if :{?app_password}
    ALTER ROLE :"app_role" PASSWORD :'app_password';
\endif
\if :{?readonly_password}
    ALTER ROLE :"readonly_role" PASSWORD :'readonly_password';
\endif

-- The database, owned by the owner role (an existing one is handed over to it).
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              :'dbname', :'owner_role', 'UTF8')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname')
\gexec
ALTER DATABASE :"dbname" OWNER TO :"owner_role";
-- Only our roles may connect, and nobody but the owner gets temporary tables.
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO :"app_role", :"readonly_role";

\connect :"dbname"

-- The schema: the owner creates objects in it, the others only use it. (PostgreSQL 15 already
-- keeps CREATE from PUBLIC; older servers grant it, hence the REVOKE.)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner_role";
GRANT USAGE ON SCHEMA public TO :"app_role", :"readonly_role";

-- Objects the owner creates from now on (every migration): rows and sequences for the
-- application role. Functions keep PostgreSQL's default (EXECUTE for everyone): Procrastinate's
-- and ours run with the caller's rights, so calling one never gets past the table grants.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";
