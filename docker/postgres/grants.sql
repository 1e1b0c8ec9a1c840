-- The hooks receiver's rights on the results database, granted by compose's `db-grants` after `migrate` (the tables
-- must exist; run again on every `up`, so a table a later migration adds is granted here). Run as the owner:
--   psql -v ON_ERROR_STOP=1 -v hooks=ROLE -f grants.sql
-- Only what xich.hooks, xich.deliveries and xich.registration touch: its deliveries (claimed, settled, forgotten),
-- the model and version it records, the audit it asks for, and reads of the run that serves it and of the schema's
-- revision (the receiver checks it at start). Nothing else: no results, no clusters, no DDL.
\set ON_ERROR_STOP on
GRANT SELECT, INSERT, UPDATE, DELETE ON hook_delivery TO :"hooks";
GRANT SELECT, INSERT ON model TO :"hooks";
GRANT SELECT, INSERT, UPDATE ON audit_request TO :"hooks";  -- a registration again clears its failures (0006)
GRANT SELECT, INSERT, UPDATE ON model_version TO :"hooks";
GRANT SELECT ON audit_run, alembic_version TO :"hooks";
GRANT USAGE ON SEQUENCE hook_delivery_id_seq, model_id_seq, model_version_id_seq, audit_request_id_seq TO :"hooks";
