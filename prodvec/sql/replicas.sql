-- Read routing (prodvec/db/replicas.py): asked of each PRODVEC_READ_URLS server before
-- searches go there.

-- name: standby_state
-- in_recovery: a hot standby (false: a primary, perhaps a promoted former replica, whose data
-- may have forked: never read from it as a replica). streaming: its WAL receiver is connected
-- to the primary (false: what it has may be any age). lag_seconds: 0 when it has replayed all
-- the WAL it received; otherwise how old its last replayed commit is, which is how far its
-- data trails the primary's (pg_last_xact_replay_timestamp() alone grows on an idle primary).
SELECT pg_is_in_recovery() AS in_recovery,
       coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false) AS streaming,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END AS lag_seconds
