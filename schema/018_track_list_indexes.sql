-- The track list (CLI `tracks`/`status`, the web dashboard) pages newest first and reads each
-- track's newest analysis: an index for each, so a page costs the same with 100 000 tracks as
-- with ten; and the key filter ("A minor") gets an index like the tempo filter has.

CREATE INDEX tracks_insert_order_index ON tracks (insert_order);
CREATE INDEX analysis_results_track_id_insert_order_index
    ON analysis_results (track_id, insert_order);
CREATE INDEX analysis_results_key_index ON analysis_results (key);
