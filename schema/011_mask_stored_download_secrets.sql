-- Rows written before 010 may hold a URL's user-info or signed query in download_jobs.source,
-- and the same URL inside download_jobs.error (which the inspection views show). This one-time
-- pass keeps each such source, whole, in download_credentials (where downloads read it) and
-- masks both columns. SQL cannot call soundforge.redact, so it uses a stricter rule than that
-- function: user-info becomes `***@` and a whole query string `?***`. Rows written from 010 on
-- are masked by soundforge.redact when they are stored, and never reach this pass.
--
-- The row triggers are off for the pass: masking is not a status change (no NOTIFY, no new
-- lock_version, and updated_at keeps saying when the job last changed).

ALTER TABLE download_jobs DISABLE TRIGGER USER;

INSERT INTO download_credentials (download_job_id, source)
SELECT id, source FROM download_jobs
WHERE source ~ '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*@|[^?#]*\?)'
ON CONFLICT (download_job_id) DO NOTHING;

UPDATE download_jobs
SET source = regexp_replace(
        regexp_replace(source, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1***@'),
        '\?[^#]*', '?***'),
    error = regexp_replace(
        regexp_replace(error, '([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s''"]*@', '\1***@', 'g'),
        '(://[^\s?''"]*)\?[^\s''"]*', '\1?***', 'g')
WHERE source ~ '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*@|[^?#]*\?)'
   OR error ~ '[A-Za-z][A-Za-z0-9+.-]*://([^/?#\s''"]*@|[^\s?''"]*\?)';

ALTER TABLE download_jobs ENABLE TRIGGER USER;
