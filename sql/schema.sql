-- spyctl schema, version 5. `spyctl db init` runs this whole file: it drops
-- and recreates every table (the course's DDL script), so it is only run
-- on an empty database or with --force.
DROP TABLE IF EXISTS EnrolCodes;
DROP TABLE IF EXISTS AgentIdentities;
DROP TABLE IF EXISTS Audit;
DROP TABLE IF EXISTS Files;
DROP TABLE IF EXISTS Messages;
DROP TABLE IF EXISTS LoginLockouts;
DROP TABLE IF EXISTS LoginFailures;
DROP TABLE IF EXISTS Agents;
DROP TABLE IF EXISTS Meta;

-- Facts about this database. 'database-id' holds 16 random bytes made at
-- `db init`: every key is derived with it as the HKDF salt, so nothing made
-- for an earlier database (a session, an exported wire key, a captured line)
-- is honoured by a database created later with the same master.key.
CREATE TABLE Meta (
    Name  TEXT PRIMARY KEY,
    Value BLOB NOT NULL
);

-- One row per agent. Name and alias are Fernet tokens under the at-rest key;
-- the password is an Argon2id PHC string; AgentNameIndex is the blind index
-- (HMAC-SHA256 of the case-folded name) that makes names unique and findable
-- without storing them. AUTOINCREMENT so an AgentId is never reused: wire keys
-- are derived from the id, and a new agent must not inherit an old one's key.
-- (Dropping the table forgets the counter; `db init --force` carries it over.)
-- KeyGeneration is bumped when a director revokes the agent's key: the wire
-- key is derived with it and sessions carry it, so a revoked key, session or
-- captured line stops working. PasswordPeppered says the hash was made with
-- the pepper (Argon2id's secret input). RowMac is the row's integrity tag, an
-- HMAC under a key derived from the master secret over every field above, set
-- in the transaction that writes the row: a row changed by anyone without
-- that key is refused, never trusted.
CREATE TABLE Agents (
    AgentId            INTEGER PRIMARY KEY AUTOINCREMENT,
    AgentName          TEXT    NOT NULL,
    AgentAlias         TEXT    NOT NULL,
    AgentSecurityLevel INTEGER NOT NULL CHECK (AgentSecurityLevel BETWEEN 1 AND 5),
    LoginPassword      TEXT    NOT NULL,
    AgentNameIndex     TEXT    NOT NULL UNIQUE,
    KeyGeneration      INTEGER NOT NULL DEFAULT 0,
    PasswordPeppered   INTEGER NOT NULL DEFAULT 0,
    RowMac             TEXT
);

-- Who did what to which agent, when. ActorId is the director's AgentId; Entry
-- is a Fernet token under the at-rest key holding the action and its details.
CREATE TABLE Audit (
    RowId   INTEGER PRIMARY KEY,
    At      INTEGER NOT NULL,
    ActorId INTEGER NOT NULL,
    Entry   TEXT    NOT NULL
);

-- Failed logins per blind-indexed name (known or not, so lockouts do not
-- reveal which names exist), and the lock they trigger.
CREATE TABLE LoginFailures (
    NameIndex TEXT    NOT NULL,
    FailedAt  INTEGER NOT NULL
);
CREATE INDEX LoginFailuresByName ON LoginFailures (NameIndex, FailedAt);

CREATE TABLE LoginLockouts (
    NameIndex   TEXT    PRIMARY KEY,
    LockedUntil INTEGER NOT NULL
);

-- Messages received by the Boss, stored as the Fernet token that arrived
-- (encrypted under the sender's wire key). (AgentId, MessageId) is unique: a
-- retried or replayed message is stored once.
CREATE TABLE Messages (
    RowId      INTEGER PRIMARY KEY,
    AgentId    INTEGER NOT NULL,
    MessageId  TEXT    NOT NULL,
    ReceivedAt INTEGER NOT NULL,
    Token      TEXT    NOT NULL,
    -- Enrolled agents' messages (PROTOCOL.md, "Signed messages"): the Ed25519
    -- signature over the canonical statement, its time field, and the
    -- AgentIdentities row whose key made it. NULL for v1 (PSK) messages.
    Signature  BLOB,
    SignedAt   INTEGER,
    SignerRow  INTEGER,
    -- The global signature minisign checks (over Signature || the trusted
    -- comment: PROTOCOL.md, "Exports that stock minisign verifies").
    TrustedSignature BLOB,
    UNIQUE (AgentId, MessageId)
);

-- Files received completely (hash checked, moved into place). FileName is a
-- Fernet token under the at-rest key; StoredAs is the path under files/.
CREATE TABLE Files (
    RowId      INTEGER PRIMARY KEY,
    AgentId    INTEGER NOT NULL,
    FileId     TEXT    NOT NULL,
    FileName   TEXT    NOT NULL,
    Size       INTEGER NOT NULL,
    Sha256     TEXT    NOT NULL,
    StoredAs   TEXT    NOT NULL,
    ReceivedAt INTEGER NOT NULL,
    -- An enrolled agent's file: the signatures over the statement naming the
    -- whole file's SHA-256 (sent with the last chunk), as in Messages.
    Signature  BLOB,
    SignedAt   INTEGER,
    SignerRow  INTEGER,
    TrustedSignature BLOB,
    UNIQUE (AgentId, FileId)
);

-- Agents' public identities (X25519 + Ed25519), received at enrolment
-- (`spyctl join`). Never deleted: a revoked or replaced key keeps its row
-- (RevokedAt set), so signatures it made still verify as "signed by a
-- since-revoked key". At most one current (unrevoked) key per agent.
CREATE TABLE AgentIdentities (
    RowId      INTEGER PRIMARY KEY,
    AgentId    INTEGER NOT NULL,
    X25519     BLOB    NOT NULL CHECK (length(X25519) = 32),
    Ed25519    BLOB    NOT NULL CHECK (length(Ed25519) = 32),
    EnrolledAt INTEGER NOT NULL,
    RevokedAt  INTEGER
);
CREATE UNIQUE INDEX AgentIdentitiesCurrent ON AgentIdentities (AgentId) WHERE RevokedAt IS NULL;

-- One-time enrolment codes (`agent enroll N`), one live code per agent.
-- CodeHash is the SHA-256 of the code (the SPAKE2 password), sealed under the
-- at-rest key: the code itself is never stored. The row is deleted by the
-- first JOIN that names the agent, whatever its outcome (single use, and one
-- failed try kills it), and is refused after ExpiresAt.
CREATE TABLE EnrolCodes (
    AgentId   INTEGER PRIMARY KEY,
    CodeHash  TEXT    NOT NULL,
    ExpiresAt INTEGER NOT NULL,
    IssuedBy  INTEGER NOT NULL
);
