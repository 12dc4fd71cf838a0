-- DEV-ONLY: run once by the postgres image on an empty data directory. The passwords are the
-- placeholders from kustomization.yaml's secretGenerator.
CREATE ROLE flag_service LOGIN PASSWORD 'dev-only-flag-password';
CREATE DATABASE flag OWNER flag_service;
REVOKE ALL ON DATABASE flag FROM PUBLIC;

CREATE ROLE attendance_service LOGIN PASSWORD 'dev-only-attendance-password';
CREATE DATABASE attendance OWNER attendance_service;
REVOKE ALL ON DATABASE attendance FROM PUBLIC;

CREATE ROLE access_service LOGIN PASSWORD 'dev-only-access-password';
CREATE DATABASE access OWNER access_service;
REVOKE ALL ON DATABASE access FROM PUBLIC;
