-- Sets the password of the role :"role" (a psql variable) to the value of the
-- environment variable GRIDMATE_ROLE_PASSWORD, run by postgresql-setup.service
-- as the superuser:
--
--   GRIDMATE_ROLE_PASSWORD=... psql -v role=teslamate -f set-role-password.sql
--
-- The password never appears in argv (psql reads it with \getenv) nor in the
-- server log: statement and duration logging are off for this session, and a
-- failing statement is not echoed to the log. On a read-only replica the
-- primary's roles arrive by replication, so nothing is done.
\set ON_ERROR_STOP on
SELECT pg_is_in_recovery() AS in_recovery \gset
\if :in_recovery
\echo 'a read-only replica: role passwords come from the primary'
\else
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';
\getenv password GRIDMATE_ROLE_PASSWORD
\if :{?password}
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
\else
\warn 'GRIDMATE_ROLE_PASSWORD is not set; the password is left unchanged'
SELECT 1/0 AS no_password_given;
\endif
\endif
