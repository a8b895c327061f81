-- spyctl schema, version 9. `spyctl db init` runs this whole file: it drops
-- and recreates every table (the course's DDL script), so it is only run
-- on an empty database or with --force.
DROP TABLE IF EXISTS OrderAttachments;
DROP TABLE IF EXISTS OrderFiles;
DROP TABLE IF EXISTS ChatLines;
DROP TABLE IF EXISTS Orders;
DROP TABLE IF EXISTS EnrolCodes;
DROP TABLE IF EXISTS AgentIdentities;
DROP TABLE IF EXISTS Audit;
DROP TABLE IF EXISTS Files;
DROP TABLE IF EXISTS Messages;
DROP TABLE IF EXISTS LoginLockouts;
DROP TABLE IF EXISTS LoginFailures;
DROP TABLE IF EXISTS Agents;
DROP TABLE IF EXISTS Meta;
DROP TABLE IF EXISTS KeyEpochs;

-- Facts about this database. 'database-id' holds 16 random bytes made at
-- `db init`: every key is derived with it as the HKDF salt, so nothing made
-- for an earlier database (a session, an exported wire key, a captured line)
-- is honoured by a database created later with the same master.key.
CREATE TABLE Meta (
    Name  TEXT PRIMARY KEY,
    Value BLOB NOT NULL
);

-- Key epochs (`spyctl key rotate|retire`): each is one master secret in
-- master.key. New writes use the newest live epoch; every row that holds
-- something sealed, indexed or tagged under a master-derived key records its
-- epoch in a KeyEpoch column, so rewrap knows what to redo and `key retire`
-- can refuse while anything still needs the epoch. KeyCheck is a short HKDF
-- output of the epoch's secret, to tell a wrong master.key from damage.
-- No rows means epoch 0 alone (a home that never rotated). A password hash
-- can only be redone when its agent logs in, so retiring an epoch keeps that
-- epoch's pepper alone, sealed under a live epoch's at-rest key
-- (PepperSealed, whose epoch is KeyEpoch), until no hash needs it; every
-- other key of the epoch is gone with its secret.
CREATE TABLE KeyEpochs (
    Epoch        INTEGER PRIMARY KEY,
    CreatedAt    INTEGER NOT NULL,
    RetiredAt    INTEGER,
    KeyCheck     TEXT,
    PepperSealed TEXT,
    KeyEpoch     INTEGER
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
    RowMac             TEXT,
    KeyEpoch           INTEGER NOT NULL DEFAULT 0,
    PepperEpoch        INTEGER NOT NULL DEFAULT 0,
    WireEpoch          INTEGER
);

-- Who did what to which agent, when. ActorId is the director's AgentId; Entry
-- is a Fernet token under the at-rest key holding the action and its details.
CREATE TABLE Audit (
    RowId   INTEGER PRIMARY KEY,
    At      INTEGER NOT NULL,
    ActorId INTEGER NOT NULL,
    Entry   TEXT    NOT NULL,
    KeyEpoch INTEGER NOT NULL DEFAULT 0
);

-- Failed logins per blind-indexed name (known or not, so lockouts do not
-- reveal which names exist), and the lock they trigger.
CREATE TABLE LoginFailures (
    NameIndex TEXT    NOT NULL,
    FailedAt  INTEGER NOT NULL,
    KeyEpoch  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX LoginFailuresByName ON LoginFailures (NameIndex, FailedAt);

CREATE TABLE LoginLockouts (
    NameIndex   TEXT    PRIMARY KEY,
    LockedUntil INTEGER NOT NULL,
    KeyEpoch    INTEGER NOT NULL DEFAULT 0
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
    -- The epoch of the wire key the token is sealed under; NULL for tokens
    -- under an enrolled agent's channel key (not derived from master.key).
    KeyEpoch   INTEGER,
    -- The global signature minisign checks (over Signature || the trusted
    -- comment: PROTOCOL.md, "Exports that stock minisign verifies").
    TrustedSignature BLOB,
    UNIQUE (AgentId, MessageId)
);
CREATE INDEX MessagesByEpoch ON Messages (KeyEpoch);

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
    KeyEpoch   INTEGER NOT NULL DEFAULT 0,
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
    IssuedBy  INTEGER NOT NULL,
    KeyEpoch  INTEGER NOT NULL DEFAULT 0
);

-- Orders from a director to an enrolled agent (`spyctl order`), waiting in
-- the agent's outbox until delivered over a v2 session. Sealed is the order's
-- text as a Fernet token under the agent's channel key (so only the Boss's
-- identity and the agent's can open it; master.key alone cannot). An order is
-- DeliveredAt once the agent has confirmed storing it in its own home;
-- until then every fetch offers it again (the agent drops repeats by
-- OrderId), so an order is never lost and never shown twice.
CREATE TABLE Orders (
    RowId       INTEGER PRIMARY KEY,
    AgentId     INTEGER NOT NULL,
    OrderId     TEXT    NOT NULL,
    CreatedAt   INTEGER NOT NULL,
    IssuedBy    INTEGER NOT NULL,
    Sealed      TEXT    NOT NULL,
    DeliveredAt INTEGER,
    UNIQUE (AgentId, OrderId)
);
CREATE INDEX OrdersPending ON Orders (AgentId, RowId) WHERE DeliveredAt IS NULL;

-- Chat lines relayed by the Boss between an enrolled agent (`spyctl chat`)
-- and a director (`spyctl chat N`). Sealed is the line's text as a Fernet
-- token under the agent's channel key, as for Orders. ToAgent is 1 for a
-- director's line to the agent, 0 for the agent's line to the directors;
-- Sender is the AgentId of who typed it. A line is DeliveredAt once written
-- to a chat session of the other side; until then it waits for that side to
-- join.
CREATE TABLE ChatLines (
    RowId       INTEGER PRIMARY KEY,
    AgentId     INTEGER NOT NULL,
    LineId      TEXT    NOT NULL,
    CreatedAt   INTEGER NOT NULL,
    Sender      INTEGER NOT NULL,
    ToAgent     INTEGER NOT NULL,
    Sealed      TEXT    NOT NULL,
    DeliveredAt INTEGER,
    UNIQUE (AgentId, LineId)
);
CREATE INDEX ChatPending ON ChatLines (AgentId, ToAgent, RowId) WHERE DeliveredAt IS NULL;

-- Files that travel with orders (`spyctl order --file`). The bytes are under
-- files/orders/<FileId>, sealed (STREAM, AES-256-GCM, HKDF label
-- "spyctl/v1/order-file/<FileId>"); one copy serves every agent of a
-- --level order. Size and Sha256 are the plaintext's; the name is never
-- here: it travels only sealed, in OrderAttachments.Sealed.
CREATE TABLE OrderFiles (
    FileId    TEXT    PRIMARY KEY,
    Size      INTEGER NOT NULL,
    Sha256    TEXT    NOT NULL,
    CreatedAt INTEGER NOT NULL
);

-- Which order carries which file, per agent. Sealed is the file's id, name,
-- size and SHA-256 as JSON, a Fernet token under the agent's channel key
-- (as Orders.Sealed). DeliveredAt is set when the agent reports the whole
-- file on its disk with the right SHA-256 (frame N).
CREATE TABLE OrderAttachments (
    AgentId     INTEGER NOT NULL,
    OrderId     TEXT    NOT NULL,
    FileId      TEXT    NOT NULL REFERENCES OrderFiles (FileId),
    Sealed      TEXT    NOT NULL,
    DeliveredAt INTEGER,
    PRIMARY KEY (AgentId, OrderId),
    UNIQUE (AgentId, FileId)
);
