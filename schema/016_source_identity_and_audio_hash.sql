-- Adding a source twice finds the same track: `tracks.source_key` identifies a non-Spotify
-- source (a digest of its URL, or of a local file's path, size and modification time; NULL for
-- Spotify tracks, which have spotify_id, and for tracks made with --force), unique like
-- spotify_id. `download_jobs.audio_sha256` is the SHA-256 of the stored audio, so tracks whose
-- audio is identical can be listed (`soundforge tracks --duplicates`).

ALTER TABLE tracks ADD COLUMN source_key text;
CREATE UNIQUE INDEX tracks_source_key_index ON tracks (source_key);

ALTER TABLE download_jobs ADD COLUMN audio_sha256 text;
CREATE INDEX download_jobs_audio_sha256_index ON download_jobs (audio_sha256)
    WHERE audio_sha256 IS NOT NULL;

-- soundforge_complete_download_v1, and the stored file's SHA-256 recorded on the completed row
-- in the same transaction (a bookkeeping change: no progress NOTIFY).
CREATE FUNCTION soundforge_complete_download_v2(
    download_id uuid, expected_lock_version integer, stored_path text, stored_size bigint,
    audio_duration integer, follow_ups jsonb, stored_sha256 text
) RETURNS TABLE (stage text, created_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    completed boolean := false;
BEGIN
    FOR stage, created_id IN
        SELECT done.stage, done.created_id FROM soundforge_complete_download_v1(
            download_id, expected_lock_version, stored_path, stored_size, audio_duration,
            follow_ups) done
    LOOP
        completed := true;
        RETURN NEXT;
    END LOOP;
    IF completed AND stored_sha256 IS NOT NULL THEN
        UPDATE download_jobs AS job SET audio_sha256 = stored_sha256 WHERE job.id = download_id;
    END IF;
END
$$;
