-- What the spec lists as planned, built: optimistic locking on the job tables, trigram search
-- on title and artist, a tempo index, at most one analysis_result per analysis job; plus the
-- queue bookkeeping each job row carries (its Procrastinate job id and the attempts made).

ALTER TABLE download_jobs ADD COLUMN lock_version integer NOT NULL DEFAULT 1;
ALTER TABLE processing_jobs ADD COLUMN lock_version integer NOT NULL DEFAULT 1;
ALTER TABLE analysis_jobs ADD COLUMN lock_version integer NOT NULL DEFAULT 1;

ALTER TABLE download_jobs ADD COLUMN procrastinate_job_id bigint;
ALTER TABLE processing_jobs ADD COLUMN procrastinate_job_id bigint;
ALTER TABLE analysis_jobs ADD COLUMN procrastinate_job_id bigint;

ALTER TABLE download_jobs ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE processing_jobs ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE analysis_jobs ADD COLUMN attempts integer NOT NULL DEFAULT 0;

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX tracks_title_trgm_index ON tracks USING gin (title gin_trgm_ops);
CREATE INDEX tracks_artist_trgm_index ON tracks USING gin (artist gin_trgm_ops);

CREATE INDEX analysis_results_tempo_index ON analysis_results (tempo);
CREATE UNIQUE INDEX analysis_results_analysis_job_id_unique_index
    ON analysis_results (analysis_job_id);
