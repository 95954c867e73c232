-- Grants that must follow migrations. Run after the service's first start (its ExecStartPre
-- migrates) and after every upgrade, as a superuser or as soundforge_owner:
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -d soundforge -f deploy/postgres-grants.sql
--
-- Idempotent. Takes the same optional -v variables as deploy/postgres-roles.sql (app_role,
-- readonly_role).

\set ON_ERROR_STOP on

\if :{?app_role}
\else
    \set app_role soundforge_app
\endif
\if :{?readonly_role}
\else
    \set readonly_role soundforge_readonly
\endif

-- The read-only role sees the inspection views. A view reads its tables with its owner's
-- rights, so the views alone need nothing on the tables themselves.
SELECT format('GRANT SELECT ON %I.%I TO %I', schemaname, viewname, :'readonly_role')
FROM pg_views
WHERE schemaname = 'public' AND viewname LIKE 'soundforge\_%'
ORDER BY viewname
\gexec

-- ...and the tables the web dashboard reads (`soundforge serve` with DATABASE_URL naming the
-- read-only role is a read-only dashboard): SELECT only, never a write.
SELECT format('GRANT SELECT ON %I.%I TO %I', 'public', name, :'readonly_role')
FROM unnest(ARRAY['tracks', 'stems', 'analysis_results', 'download_jobs', 'processing_jobs',
                  'analysis_jobs', 'soundforge_stage_outcomes', 'soundforge_worker_queues',
                  'soundforge_schema_migrations', 'procrastinate_jobs', 'procrastinate_workers',
                  'procrastinate_events']) AS name
WHERE to_regclass('public.' || name) IS NOT NULL
\gexec

-- The application role normally gets its rights from soundforge_owner's default privileges
-- (deploy/postgres-roles.sql); this covers a database migrated before those existed.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_role";
-- ...except the migration records: only `soundforge migrate` (the owner) writes those.
SELECT format('REVOKE INSERT, UPDATE, DELETE ON soundforge_schema_migrations FROM %I',
              :'app_role')
WHERE to_regclass('public.soundforge_schema_migrations') IS NOT NULL
\gexec
