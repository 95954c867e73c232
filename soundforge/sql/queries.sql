-- SoundForge's SQL, one statement per `-- name:` header (see soundforge/queries.py).
-- Timestamps are UTC, stored without time zone, at second precision, as in the original.

-- ---------------------------------------------------------------- migrations

-- name: create_migrations_table
-- The record of applied schema files (ours and Procrastinate's).
CREATE TABLE IF NOT EXISTS soundforge_schema_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock_migrations
-- Serialise migration runs: a session-level advisory lock, held until unlock_migrations.
SELECT pg_advisory_lock(%(key)s);

-- name: unlock_migrations
-- Release the migration lock.
SELECT pg_advisory_unlock(%(key)s);

-- name: list_applied_migrations
-- Every recorded schema file.
SELECT name, checksum, applied_at FROM soundforge_schema_migrations ORDER BY name;

-- name: record_migration
-- Remember one applied schema file.
INSERT INTO soundforge_schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s);

-- name: migrations_table_present
-- True once any migration has run.
SELECT to_regclass('soundforge_schema_migrations') IS NOT NULL AS present;

-- name: list_applied_migration_names
-- The names of the recorded schema files (for the schema check every data command makes).
SELECT name FROM soundforge_schema_migrations;

-- name: procrastinate_schema_present
-- True when Procrastinate's tables exist already (installed before we recorded it).
SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present;

-- name: procrastinate_functions
-- The Procrastinate functions the database has (to tell how far an unrecorded schema got).
SELECT proname AS name FROM pg_proc
WHERE proname LIKE 'procrastinate\_%%' AND pg_function_is_visible(oid);

-- ---------------------------------------------------------------- tracks

-- name: insert_track
-- Create a track.
INSERT INTO tracks (id, spotify_id, spotify_url, title, artist, album, album_art_url, duration,
                    source_key, inserted_at, updated_at)
VALUES (%(id)s, %(spotify_id)s, %(spotify_url)s, %(title)s, %(artist)s, %(album)s,
        %(album_art_url)s, %(duration)s, %(source_key)s, timezone('utc', now()),
        timezone('utc', now()))
RETURNING *;

-- name: insert_track_unless_known
-- Create a track unless one has this spotify_id or source_key; returns nothing when it exists.
INSERT INTO tracks (id, spotify_id, spotify_url, title, artist, album, album_art_url, duration,
                    source_key, inserted_at, updated_at)
VALUES (%(id)s, %(spotify_id)s, %(spotify_url)s, %(title)s, %(artist)s, %(album)s,
        %(album_art_url)s, %(duration)s, %(source_key)s, timezone('utc', now()),
        timezone('utc', now()))
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_track
-- One track by id.
SELECT * FROM tracks WHERE id = %(id)s;

-- name: get_known_track
-- The track with this Spotify id, else the one with this source key.
SELECT * FROM tracks WHERE spotify_id = %(spotify_id)s OR source_key = %(source_key)s
ORDER BY (spotify_id = %(spotify_id)s) DESC NULLS LAST LIMIT 1;

-- name: duplicate_audio_tracks
-- Tracks whose newest completed download has the same audio (SHA-256) as another track's,
-- grouped by that digest, oldest track first in each group.
WITH newest AS (
    SELECT DISTINCT ON (job.track_id) job.track_id, job.audio_sha256
    FROM download_jobs job
    WHERE job.status = 'completed' AND job.audio_sha256 IS NOT NULL
    ORDER BY job.track_id, job.insert_order DESC
), shared AS (
    SELECT audio_sha256 FROM newest GROUP BY audio_sha256 HAVING count(*) > 1
)
SELECT newest.audio_sha256, track.*
FROM newest JOIN shared USING (audio_sha256) JOIN tracks track ON track.id = newest.track_id
ORDER BY newest.audio_sha256, track.insert_order
LIMIT %(limit)s OFFSET %(offset)s;

-- name: track_page
-- One page of the track list, newest first, for the CLI (`tracks`, `status`) and the web
-- (Tracks page, GET /api/tracks) alike: optionally some track ids, a title/artist search
-- (trigram indexes), a tempo range (tempo index) and a key, both on the newest analysis; each
-- row carries that analysis' columns and each stage's newest job (from the soundforge_pipeline
-- view). The page's ids are chosen first, so a deep page costs the rows it
-- skips, not their joins. Run unprepared: a NULL filter then drops out of the plan. Fetch
-- `limit` + 1 rows to know whether another page follows.
WITH page AS (
    SELECT track.id, track.insert_order FROM tracks track
    WHERE (%(track_ids)s::uuid[] IS NULL OR track.id = ANY(%(track_ids)s::uuid[]))
      AND (%(pattern)s::text IS NULL
           OR track.title ILIKE %(pattern)s::text OR track.artist ILIKE %(pattern)s::text)
      AND (%(tempo_min)s::double precision IS NULL AND %(tempo_max)s::double precision IS NULL
           AND %(key)s::text IS NULL
           OR track.id IN (
               SELECT candidate.track_id FROM analysis_results candidate
               WHERE (%(tempo_min)s::double precision IS NULL
                      OR candidate.tempo >= %(tempo_min)s::double precision)
                 AND (%(tempo_max)s::double precision IS NULL
                      OR candidate.tempo <= %(tempo_max)s::double precision)
                 AND (%(key)s::text IS NULL OR candidate.key = %(key)s::text))
              AND EXISTS (
               SELECT FROM (
                   SELECT newest.tempo, newest.key FROM analysis_results newest
                   WHERE newest.track_id = track.id ORDER BY newest.insert_order DESC LIMIT 1
               ) latest
               WHERE (%(tempo_min)s::double precision IS NULL
                      OR latest.tempo >= %(tempo_min)s::double precision)
                 AND (%(tempo_max)s::double precision IS NULL
                      OR latest.tempo <= %(tempo_max)s::double precision)
                 AND (%(key)s::text IS NULL OR latest.key = %(key)s::text)))
    ORDER BY track.insert_order DESC
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT track.id AS track_id, track.id, track.title, track.artist, track.album,
       track.album_art_url, track.duration, track.spotify_id, track.spotify_url,
       track.inserted_at, track.updated_at,
       analysis.id AS analysis_result_id, analysis.tempo, analysis.key,
       (analysis.features ->> 'key_confidence')::double precision AS key_confidence,
       analysis.energy, analysis.spectral_centroid, analysis.spectral_rolloff,
       analysis.zero_crossing_rate,
       pipeline.download_job_id, pipeline.download_status, pipeline.download_progress,
       pipeline.download_error, pipeline.separate_job_id, pipeline.separate_status,
       pipeline.separate_progress, pipeline.separate_error, pipeline.analyze_job_id,
       pipeline.analyze_status, pipeline.analyze_progress, pipeline.analyze_error
FROM page JOIN tracks track ON track.id = page.id
JOIN soundforge_pipeline pipeline ON pipeline.track_id = page.id
LEFT JOIN LATERAL (
    SELECT result.id, result.tempo, result.key, result.features, result.energy,
           result.spectral_centroid, result.spectral_rolloff, result.zero_crossing_rate
    FROM analysis_results result WHERE result.track_id = track.id
    ORDER BY result.insert_order DESC LIMIT 1
) analysis ON true
ORDER BY page.insert_order DESC;

-- name: delete_track
-- Delete a track; the foreign keys cascade to its jobs, stems and results.
DELETE FROM tracks WHERE id = %(id)s RETURNING id;

-- name: delete_track_returning_files
-- Delete a track and return the stored paths that belonged to it, in one statement.
WITH files AS (
    SELECT output_path AS path FROM download_jobs
    WHERE track_id = %(id)s AND output_path IS NOT NULL
    UNION
    SELECT file_path FROM stems WHERE track_id = %(id)s AND file_path IS NOT NULL
), deleted AS (
    DELETE FROM tracks WHERE id = %(id)s RETURNING id
)
SELECT (SELECT count(*) FROM deleted) AS deleted, array(SELECT path FROM files) AS paths;

-- ---------------------------------------------------------------- stems and results

-- name: list_stems_for_track
-- A track's stems, newest run first, then by stem name.
SELECT stem.* FROM stems stem JOIN processing_jobs job ON job.id = stem.processing_job_id
WHERE stem.track_id = %(track_id)s ORDER BY job.insert_order DESC, stem.stem_type;

-- name: get_stem
-- One stem row by id.
SELECT * FROM stems WHERE id = %(id)s;

-- name: newest_analysis_result_for_track
-- The newest analysis of a track (several may exist after re-analysis).
SELECT * FROM analysis_results WHERE track_id = %(track_id)s
ORDER BY insert_order DESC LIMIT 1;

-- name: track_jobs
-- Every job row of a track, each stage's rows oldest first (the track page's history)
SELECT 'download' AS stage, id, status, progress, error, attempts, inserted_at, started_at,
       finished_at, insert_order, NULL::text AS model
FROM download_jobs WHERE track_id = %(track_id)s
UNION ALL
SELECT 'separate', id, status, progress, error, attempts, inserted_at, started_at,
       finished_at, insert_order, model
FROM processing_jobs WHERE track_id = %(track_id)s
UNION ALL
SELECT 'analyze', id, status, progress, error, attempts, inserted_at, started_at, finished_at,
       insert_order, NULL
FROM analysis_jobs WHERE track_id = %(track_id)s
ORDER BY insert_order;

-- ---------------------------------------------------------------- job rows ({table})

-- name: insert_job
-- Create a job row in one of the three job tables (extra columns are set by update_job_fields).
INSERT INTO {table} (id, track_id, status, progress, inserted_at, updated_at)
VALUES (%(id)s, %(track_id)s, 'queued', 0, timezone('utc', now()), timezone('utc', now()))
RETURNING *;

-- name: insert_queued_download_job
-- Create a download row and its queue job in one statement (no row when the queueing lock is
-- held by a waiting job).
SELECT job.* FROM soundforge_queue_download_job_v2(
    %(id)s, %(track_id)s, %(source)s, %(fetch_source)s, %(queue)s, %(task_name)s,
    %(queueing_lock)s, %(args)s
) job
WHERE job.id IS NOT NULL;

-- name: insert_queued_processing_job
-- Create a separation row and its queue job in one statement (see insert_queued_download_job).
SELECT job.* FROM soundforge_queue_processing_job_v1(
    %(id)s, %(track_id)s, %(model)s, %(options)s, %(queue)s, %(task_name)s, %(queueing_lock)s,
    %(args)s
) job
WHERE job.id IS NOT NULL;

-- name: insert_queued_analysis_job
-- Create an analysis row and its queue job in one statement (see insert_queued_download_job).
SELECT job.* FROM soundforge_queue_analysis_job_v1(
    %(id)s, %(track_id)s, %(queue)s, %(task_name)s, %(queueing_lock)s, %(args)s
) job
WHERE job.id IS NOT NULL;

-- name: insert_track_with_queued_download
-- A new track and its queued download in one statement; no row when a track with this
-- spotify_id or source_key exists already (the caller then takes the existing track's path).
WITH track AS (
    INSERT INTO tracks (id, spotify_id, spotify_url, title, artist, album, album_art_url,
                        duration, source_key, inserted_at, updated_at)
    VALUES (%(track_id)s, %(spotify_id)s, %(spotify_url)s, %(title)s, %(artist)s, %(album)s,
            %(album_art_url)s, %(duration)s, %(source_key)s, timezone('utc', now()),
            timezone('utc', now()))
    ON CONFLICT DO NOTHING
    RETURNING id, inserted_at, updated_at
)
SELECT track.inserted_at AS track_inserted_at, track.updated_at AS track_updated_at, job.*
FROM track CROSS JOIN LATERAL soundforge_queue_download_job_v2(
    %(id)s, track.id, %(source)s, %(fetch_source)s, %(queue)s, %(task_name)s,
    %(queueing_lock)s, %(args)s
) job;

-- name: insert_processing_job
-- Create a separation job row with its model and options.
INSERT INTO processing_jobs (id, track_id, model, options, status, progress, inserted_at,
                             updated_at)
VALUES (%(id)s, %(track_id)s, %(model)s, %(options)s, 'queued', 0, timezone('utc', now()),
        timezone('utc', now()))
RETURNING *;

-- name: get_job
-- One job row.
SELECT * FROM {table} WHERE id = %(id)s;

-- name: advance_job
-- Move a job's status and progress, optimistically locked on lock_version.
UPDATE {table}
SET status = %(status)s, progress = %(progress)s, error = %(error)s
WHERE id = %(id)s AND lock_version = %(lock_version)s
RETURNING *;

-- ---------------------------------------------------------------- pipeline

-- name: lock_track
-- Serialise pipeline decisions about one track (held until the transaction ends).
SELECT id FROM tracks WHERE id = %(track_id)s FOR UPDATE;

-- name: newest_job_for_track
-- The newest row of one stage for a track, whatever its status.
SELECT * FROM {table} WHERE track_id = %(track_id)s ORDER BY insert_order DESC LIMIT 1;

-- name: live_jobs_for_track
-- A track's rows of one stage that are not failed (queued, running or completed), newest first.
SELECT * FROM {table} WHERE track_id = %(track_id)s AND status <> 'failed'
ORDER BY insert_order DESC;

-- name: newest_completed_download
-- The stored path of a track's newest completed download: the audio every later stage reads.
SELECT soundforge_track_audio_v1(%(track_id)s) AS output_path;

-- name: newest_download_source
-- Where a track's audio came from last time (for a download deferred by track id alone), in
-- the form a download fetches (with the credential kept apart in download_credentials).
SELECT coalesce(credential.source, job.source) AS source
FROM download_jobs job
LEFT JOIN download_credentials credential ON credential.download_job_id = job.id
WHERE job.track_id = %(track_id)s AND job.source IS NOT NULL
ORDER BY job.insert_order DESC LIMIT 1;

-- name: download_fetch_source
-- The source one download fetches: the credential-bearing form kept in download_credentials
-- when masking changed it, else the row's own source.
SELECT coalesce(credential.source, job.source) AS source
FROM download_jobs job
LEFT JOIN download_credentials credential ON credential.download_job_id = job.id
WHERE job.id = %(id)s;

-- name: start_job
-- A worker takes a queued (or rescued, still active) row: active status, its queue job id and
-- attempt count, in one statement that also returns the track's downloaded audio
-- (`audio_path`). Returns nothing when the row is finished or elsewhere.
WITH job AS (
    UPDATE {table}
    SET status = %(status)s, procrastinate_job_id = %(procrastinate_job_id)s,
        attempts = greatest(attempts, %(attempts)s)
    WHERE id = %(id)s AND status IN ('queued', %(status)s)
    RETURNING *
)
SELECT job.*, soundforge_track_audio_v1(job.track_id) AS audio_path FROM job;

-- name: start_download_job
-- start_job for a download, returning with the row what its fetch needs: the track's columns
-- (prefixed `track_`) and the source to fetch (`fetch_source`: the credential-bearing form from
-- download_credentials when masking changed it, else the row's own), so a download starts in
-- one round trip. Returns nothing when the row is finished or elsewhere.
WITH job AS (
    UPDATE download_jobs
    SET status = %(status)s, procrastinate_job_id = %(procrastinate_job_id)s,
        attempts = greatest(attempts, %(attempts)s)
    WHERE id = %(id)s AND status IN ('queued', %(status)s)
    RETURNING *
)
SELECT job.*, coalesce(credential.source, job.source) AS fetch_source,
       track.id IS NOT NULL AS track_found, track.title AS track_title, track.artist AS track_artist,
       track.album AS track_album, track.album_art_url AS track_album_art_url,
       track.duration AS track_duration, track.spotify_id AS track_spotify_id,
       track.spotify_url AS track_spotify_url, track.inserted_at AS track_inserted_at,
       track.updated_at AS track_updated_at
FROM job
LEFT JOIN tracks track ON track.id = job.track_id
LEFT JOIN download_credentials credential ON credential.download_job_id = job.id;

-- name: set_job_queue_info
-- Record which Procrastinate job drives a row and how many attempts it has made.
UPDATE {table} SET procrastinate_job_id = %(procrastinate_job_id)s, attempts = %(attempts)s
WHERE id = %(id)s AND lock_version = %(lock_version)s
RETURNING *;

-- name: record_failed_attempt
-- An attempt failed and will be retried: the row keeps its status and records the attempt;
-- a row that has ended (completed, or failed by a cancel) is left alone.
UPDATE {table} SET attempts = %(attempts)s, error = %(error)s
WHERE id = %(id)s AND lock_version = %(lock_version)s
  AND status NOT IN ('completed', 'failed')
RETURNING *;

-- name: complete_download_and_fan_out
-- A download finished: record the stored file, complete the row, learn the track's duration
-- when the source did not say, and create and enqueue the follow-ups, in one statement (see
-- soundforge_complete_download_v1), recording the file's SHA-256 in the same row change (v3).
-- No rows: the row changed since it was read.
SELECT stage, created_id
FROM soundforge_complete_download_v3(%(id)s, %(lock_version)s, %(output_path)s,
                                     %(file_size)s, %(duration)s, %(follow_ups)s, %(sha256)s);

-- name: complete_processing_job
-- A separation finished: record its stem files and where they are, and complete the row, in
-- one statement; nothing is stored when the row changed since it was read.
WITH job AS (
    UPDATE processing_jobs
    SET status = 'completed', progress = 100, output_path = %(output_path)s, error = NULL
    WHERE id = %(id)s AND lock_version = %(lock_version)s
    RETURNING *
), stem AS (
    INSERT INTO stems (id, processing_job_id, track_id, stem_type, file_path, file_size,
                       inserted_at, updated_at)
    SELECT gen_random_uuid(), job.id, job.track_id, file.stem_type, file.file_path,
           file.file_size, timezone('utc', now()), timezone('utc', now())
    FROM job, unnest(%(stem_types)s::text[], %(file_paths)s::text[], %(file_sizes)s::bigint[])
              AS file (stem_type, file_path, file_size)
)
SELECT * FROM job;

-- name: complete_analysis_job
-- An analysis finished: store its result and complete the row with a summary, atomically;
-- nothing is stored when the row changed since it was read (optimistic lock).
WITH job AS (
    UPDATE analysis_jobs
    SET status = 'completed', progress = 100, results = %(results)s, error = NULL
    WHERE id = %(id)s AND lock_version = %(lock_version)s
    RETURNING *
), result AS (
    INSERT INTO analysis_results (id, track_id, analysis_job_id, tempo, key, energy,
                                  spectral_centroid, spectral_rolloff, zero_crossing_rate,
                                  features, inserted_at, updated_at)
    SELECT %(result_id)s, job.track_id, job.id, %(tempo)s, %(key)s, %(energy)s,
           %(spectral_centroid)s, %(spectral_rolloff)s, %(zero_crossing_rate)s, %(features)s,
           timezone('utc', now()), timezone('utc', now())
    FROM job
    RETURNING id
)
SELECT * FROM job;

-- name: defer_job
-- Enqueue one Procrastinate job in the caller's transaction; NULL when a job holding the same
-- queueing lock is already waiting.
SELECT soundforge_defer_stage_v1(%(queue)s, %(task_name)s, %(queueing_lock)s, %(args)s) AS id;

-- name: queue_job_args
-- The arguments a queue job was deferred with (a retry repeats a download's pipeline options).
SELECT args FROM procrastinate_jobs WHERE id = %(id)s;

-- name: set_queue_job_attempts
-- Start a waiting queue job's attempt count where an earlier queue job for the same row left
-- off (Procrastinate has no function for it; `attempts` is what its retry strategy reads).
UPDATE procrastinate_jobs SET attempts = %(attempts)s WHERE id = %(id)s AND status = 'todo';

-- name: cancel_queue_job
-- Cancel a waiting Procrastinate job, or ask a running one to abort.
SELECT procrastinate_cancel_job_v1(%(id)s, true, false) AS id;

-- name: job_state
-- One job row's state from the soundforge_jobs view (readable by the read-only role): what `watch` shows for an event, whatever the event's payload said.
SELECT stage, id AS job_id, track_id, status, progress, error FROM soundforge_jobs
WHERE id = %(job_id)s AND stage = %(stage)s;
