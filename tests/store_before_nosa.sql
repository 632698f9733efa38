-- A database as the store on SQLAlchemy Core made it (main at fb6bf17, rtgate.store.sql), a row
-- in every table: sqlite3 .dump of what tests/test_store.py opens with the store of today.
BEGIN TRANSACTION;
CREATE TABLE api_keys (
	id VARCHAR(40) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	display_prefix VARCHAR(40) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	created_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	policy TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (key_hash)
);
INSERT INTO "api_keys" VALUES('key_a','alice','rtg_abcd1234','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1800000000.0,NULL,'{"max_sessions": 2}');
CREATE TABLE calls (
	call_id VARCHAR(128) NOT NULL, 
	key_id VARCHAR(40) NOT NULL, 
	secret_id VARCHAR(40), 
	model VARCHAR(200) NOT NULL, 
	upstream VARCHAR(100) NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (call_id), 
	FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
INSERT INTO "calls" VALUES('rtc_1','key_a',NULL,'gpt-realtime','openai',1800000000.0);
CREATE TABLE client_secrets (
	secret_hash VARCHAR(64) NOT NULL, 
	key_id VARCHAR(40) NOT NULL, 
	model VARCHAR(200), 
	session TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	PRIMARY KEY (secret_hash), 
	FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
INSERT INTO "client_secrets" VALUES('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','key_a','gpt-realtime','{}',1800000000.0,1800000600.0,NULL);
CREATE TABLE console_sessions (
	value_hash VARCHAR(64) NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (value_hash)
);
INSERT INTO "console_sessions" VALUES('cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',1800000000.0,1800003600.0);
CREATE TABLE sessions (
	id VARCHAR(40) NOT NULL, 
	key_id VARCHAR(40) NOT NULL, 
	model VARCHAR(200) NOT NULL, 
	upstream VARCHAR(100) NOT NULL, 
	intent VARCHAR(40), 
	started_at FLOAT NOT NULL, 
	ended_at FLOAT, 
	close_code INTEGER, 
	close_reason VARCHAR(300), 
	closed_by VARCHAR(20), 
	PRIMARY KEY (id), 
	FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
INSERT INTO "sessions" VALUES('rs_1','key_a','gpt-realtime','openai',NULL,1800000000.0,1800000030.0,1000,'bye','client');
CREATE TABLE transcript_entries (
	id INTEGER NOT NULL, 
	session_id VARCHAR(40) NOT NULL, 
	key_id VARCHAR(40) NOT NULL, 
	seq INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	role VARCHAR(20) NOT NULL, 
	kind VARCHAR(40) NOT NULL, 
	item_id VARCHAR(100), 
	text TEXT NOT NULL, 
	data TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(session_id) REFERENCES sessions (id), 
	FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
INSERT INTO "transcript_entries" VALUES(1,'rs_1','key_a',1,1800000001.0,'user','text',NULL,'hello',NULL);
CREATE TABLE usage_records (
	id INTEGER NOT NULL, 
	session_id VARCHAR(40) NOT NULL, 
	key_id VARCHAR(40) NOT NULL, 
	model VARCHAR(200) NOT NULL, 
	price_key VARCHAR(200) NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	day VARCHAR(10) NOT NULL, 
	created_at FLOAT NOT NULL, 
	ref VARCHAR(100), 
	text_in BIGINT NOT NULL, 
	text_in_cached BIGINT NOT NULL, 
	audio_in BIGINT NOT NULL, 
	audio_in_cached BIGINT NOT NULL, 
	image_in BIGINT NOT NULL, 
	image_in_cached BIGINT NOT NULL, 
	text_out BIGINT NOT NULL, 
	audio_out BIGINT NOT NULL, 
	audio_ms BIGINT NOT NULL, 
	provider_nanos BIGINT NOT NULL, 
	charged_nanos BIGINT NOT NULL, 
	record_id VARCHAR(40), 
	review VARCHAR(40), 
	unit VARCHAR(10) DEFAULT 'token' NOT NULL, 
	metered_by VARCHAR(10) DEFAULT 'provider' NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(session_id) REFERENCES sessions (id), 
	FOREIGN KEY(key_id) REFERENCES api_keys (id)
);
INSERT INTO "usage_records" VALUES(1,'rs_1','key_a','gpt-realtime','gpt-realtime','response','2027-01-15',1800000001.0,'resp_1',5,0,0,0,0,0,0,7,0,50,60,'ur_6raZelfn9P3zsPYDrIyQO',NULL,'token','provider');
CREATE INDEX ix_console_sessions_expires_at ON console_sessions (expires_at);
CREATE INDEX ix_sessions_key_id ON sessions (key_id);
CREATE INDEX ix_sessions_key_started ON sessions (key_id, started_at);
CREATE INDEX ix_sessions_started_at ON sessions (started_at);
CREATE INDEX ix_client_secrets_key_id ON client_secrets (key_id);
CREATE INDEX ix_client_secrets_expires_at ON client_secrets (expires_at);
CREATE INDEX ix_usage_session ON usage_records (session_id);
CREATE INDEX ix_usage_day ON usage_records (day);
CREATE INDEX ix_usage_key_day ON usage_records (key_id, day);
CREATE UNIQUE INDEX ux_usage_record_id ON usage_records (record_id);
CREATE UNIQUE INDEX ux_transcript_session_seq ON transcript_entries (session_id, seq);
COMMIT;
