-- Timestamps have one-second precision (as in the original), so "the newest job of a stage"
-- was ambiguous when a retry or re-run landed in the same second as the row it follows.
-- insert_order records creation order exactly; "newest" queries and views order by it.

ALTER TABLE tracks ADD COLUMN insert_order bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE download_jobs ADD COLUMN insert_order bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE processing_jobs ADD COLUMN insert_order bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE analysis_jobs ADD COLUMN insert_order bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE analysis_results ADD COLUMN insert_order bigint GENERATED ALWAYS AS IDENTITY;

CREATE INDEX download_jobs_track_id_insert_order_index
    ON download_jobs (track_id, insert_order);
CREATE INDEX processing_jobs_track_id_insert_order_index
    ON processing_jobs (track_id, insert_order);
CREATE INDEX analysis_jobs_track_id_insert_order_index
    ON analysis_jobs (track_id, insert_order);

CREATE OR REPLACE VIEW soundforge_pipeline AS
    SELECT track.id AS track_id, track.title, track.artist, track.inserted_at,
           download.id AS download_job_id, download.status AS download_status,
           download.progress AS download_progress, download.error AS download_error,
           separate.id AS separate_job_id, separate.status AS separate_status,
           separate.progress AS separate_progress, separate.error AS separate_error,
           analysis.id AS analyze_job_id, analysis.status AS analyze_status,
           analysis.progress AS analyze_progress, analysis.error AS analyze_error
    FROM tracks track
    LEFT JOIN LATERAL (
        SELECT * FROM download_jobs j WHERE j.track_id = track.id
        ORDER BY j.insert_order DESC LIMIT 1
    ) download ON true
    LEFT JOIN LATERAL (
        SELECT * FROM processing_jobs j WHERE j.track_id = track.id
        ORDER BY j.insert_order DESC LIMIT 1
    ) separate ON true
    LEFT JOIN LATERAL (
        SELECT * FROM analysis_jobs j WHERE j.track_id = track.id
        ORDER BY j.insert_order DESC LIMIT 1
    ) analysis ON true;
