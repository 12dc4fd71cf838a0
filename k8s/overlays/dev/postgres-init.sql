-- DEV-ONLY: run once, as the superuser, by the postgres image on an empty data directory. The
-- passwords are the placeholders from kustomization.yaml's secretGenerator. Production creates
-- the same roles with its own passwords (k8s/README.md, "Database roles").
--
-- One database per service and two roles for each:
--   <svc>_migrate  owns the database and so its schema `public`: the migration Jobs' role, the
--                  only one that may create, alter or drop anything.
--   <svc>_service  the serving pods' role: CONNECT, USAGE on `public` and DML only, with the
--                  audit log append-only (runtime-grants.psql, run in each database below).

-- Nobody connects to a database unless granted.
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;

CREATE ROLE flag_migrate LOGIN PASSWORD 'dev-only-flag-migrate-password';
CREATE ROLE flag_service LOGIN PASSWORD 'dev-only-flag-password';
CREATE DATABASE flag OWNER flag_migrate;
REVOKE ALL ON DATABASE flag FROM PUBLIC;
GRANT CONNECT ON DATABASE flag TO flag_service;

CREATE ROLE attendance_migrate LOGIN PASSWORD 'dev-only-attendance-migrate-password';
CREATE ROLE attendance_service LOGIN PASSWORD 'dev-only-attendance-password';
CREATE DATABASE attendance OWNER attendance_migrate;
REVOKE ALL ON DATABASE attendance FROM PUBLIC;
GRANT CONNECT ON DATABASE attendance TO attendance_service;

CREATE ROLE access_migrate LOGIN PASSWORD 'dev-only-access-migrate-password';
CREATE ROLE access_service LOGIN PASSWORD 'dev-only-access-password';
CREATE DATABASE access OWNER access_migrate;
REVOKE ALL ON DATABASE access FROM PUBLIC;
GRANT CONNECT ON DATABASE access TO access_service;

-- The entrypoint runs only *.sql files; runtime-grants.psql is included here, once per database.
\connect flag
\i /docker-entrypoint-initdb.d/runtime-grants.psql
\connect attendance
\i /docker-entrypoint-initdb.d/runtime-grants.psql
\connect access
\i /docker-entrypoint-initdb.d/runtime-grants.psql
