//! The agent registry: the rules for agents (validation, encryption of
//! identifying fields, blind indexes, password hashes, login with lockout) on
//! top of the Agents table. Everything here works on a `Connection` and the
//! home's keys; nothing here prints or parses flags.

use rusqlite::{Connection, TransactionBehavior};
use zeroize::Zeroizing;

use crate::crypto::{BlindIndexKey, FernetKey, KeyRing, MasterKeys, RowMacKey, password};
use crate::db::{self, DbError, agents, logins};

/// Longest name or alias, in characters.
pub const MAX_FIELD_CHARS: usize = 100;
/// Password length bounds, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Failed logins within [`LOCKOUT_WINDOW_SECS`] that lock a name.
pub const LOCKOUT_THRESHOLD: i64 = 5;
pub const LOCKOUT_WINDOW_SECS: i64 = 15 * 60;
pub const LOCKOUT_SECS: i64 = 15 * 60;

/// Columns of Agents that hold Fernet tokens under the at-rest key.
pub const ENCRYPTED_COLUMNS: [&str; 2] = ["AgentName", "AgentAlias"];

/// The registry's keys in one key epoch.
pub struct EpochKeys {
    pub epoch: u32,
    pub at_rest: FernetKey,
    pub blind_index: BlindIndexKey,
    pub row_mac: RowMacKey,
    pub pepper: Zeroizing<[u8; 32]>,
}

/// The keys the registry needs, derived once from the master key: one set
/// per live key epoch, newest first. Writes use the newest; reads accept any
/// live epoch (a row not yet rewrapped after `key rotate`).
pub struct RegistryKeys {
    epochs: Vec<EpochKeys>,
}

impl RegistryKeys {
    pub fn derive(keyring: &KeyRing) -> Self {
        let epochs = keyring
            .epochs()
            .map(|epoch| {
                let derive = |label| keyring.derive_at(epoch, label).expect("a live epoch of this ring");
                EpochKeys {
                    epoch,
                    at_rest: FernetKey::from_bytes(&derive(crate::crypto::keys::labels::AT_REST)),
                    blind_index: BlindIndexKey::from_bytes(&derive(crate::crypto::keys::labels::BLIND_INDEX)),
                    row_mac: RowMacKey::from_bytes(&derive(crate::crypto::keys::labels::ROW_MAC)),
                    pepper: derive(crate::crypto::keys::labels::PEPPER),
                }
            })
            .collect();
        RegistryKeys { epochs }
    }

    /// The keys new writes use.
    pub fn newest(&self) -> &EpochKeys {
        &self.epochs[0]
    }

    /// The keys of `epoch`, if it is live.
    pub fn at(&self, epoch: u32) -> Option<&EpochKeys> {
        self.epochs.iter().find(|k| k.epoch == epoch)
    }

    /// The name's blind index under every live epoch, newest first.
    pub fn name_indexes(&self, name: &str) -> Vec<String> {
        self.epochs.iter().map(|k| k.blind_index.index(name)).collect()
    }

    /// Decrypts an at-rest column value sealed under any live epoch (newest
    /// first, as Python's `MultiFernet.decrypt` tries its keys).
    pub fn reveal(&self, token: &str) -> Result<String, RegistryError> {
        let opened = self
            .epochs
            .iter()
            .find_map(|k| k.at_rest.open(token.as_bytes(), None).ok())
            .ok_or(RegistryError::Undecryptable)?;
        String::from_utf8(opened.plaintext).map_err(|_| RegistryError::Undecryptable)
    }

    /// Seals an at-rest value under the newest epoch.
    pub fn conceal(&self, value: &str) -> String {
        self.newest().at_rest.seal(value.as_bytes())
    }

    /// A row's integrity tag over [`row_fields`], under the row's epoch.
    fn row_tag(&self, row: &agents::StoredAgent) -> Result<String, RegistryError> {
        let keys = self.at(row.key_epoch).ok_or(RegistryError::TamperedRow(row.id))?;
        let fields = row_fields(row);
        Ok(keys.row_mac.tag(&fields.iter().map(Vec::as_slice).collect::<Vec<_>>()))
    }
}

/// The fields a row's integrity tag covers, in a fixed order: everything
/// that decides what the agent is and may do.
fn row_fields(row: &agents::StoredAgent) -> [Vec<u8>; 8] {
    [
        row.id.to_be_bytes().to_vec(),
        vec![row.level],
        row.key_generation.to_be_bytes().to_vec(),
        vec![u8::from(row.password_peppered)],
        row.name_index.as_bytes().to_vec(),
        row.password_hash.as_bytes().to_vec(),
        row.name.as_bytes().to_vec(),
        row.alias.as_bytes().to_vec(),
    ]
}

/// Refuses a row whose integrity tag is missing or wrong: someone changed it
/// without the master key (a raised level, a copied password hash, a
/// rolled-back revocation). Never silently trusted.
pub fn check_row(keys: &RegistryKeys, row: &agents::StoredAgent) -> Result<(), RegistryError> {
    let fields = row_fields(row);
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    // The row's epoch picks the key: a row whose KeyEpoch was changed is
    // checked under another epoch's key (or none) and fails like any edit.
    match (&row.row_mac, keys.at(row.key_epoch)) {
        (Some(tag), Some(epoch_keys)) if epoch_keys.row_mac.verify(&refs, tag) => Ok(()),
        _ => Err(RegistryError::TamperedRow(row.id)),
    }
}

/// Re-reads row `id` and stores its integrity tag, inside the caller's
/// transaction: every write to an Agents row ends here.
fn tag_row(conn: &Connection, keys: &RegistryKeys, id: i64) -> Result<(), RegistryError> {
    if let Some(row) = agents::by_id(conn, id)? {
        agents::set_row_mac(conn, id, &keys.row_tag(&row)?)?;
    }
    Ok(())
}

/// Tags the rows a schema migration left untagged (databases from before row
/// tags), once. `tagged_before` says the home has recorded tagging this
/// database already: then untagged rows mean tampering, and are refused
/// instead of being blessed. Returns how many rows were tagged.
pub fn seal_untagged_rows(
    conn: &mut Connection,
    keys: &RegistryKeys,
    tagged_before: bool,
) -> Result<usize, RegistryError> {
    if !db::rows_untagged(conn)? {
        return Ok(0);
    }
    if tagged_before {
        return Err(RegistryError::UntaggedAgain);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rows = agents::all(&tx)?;
    for row in &rows {
        agents::set_row_mac(&tx, row.id, &keys.row_tag(row)?)?;
    }
    db::clear_rows_untagged(&tx)?;
    tx.commit()?;
    Ok(rows.len())
}

/// An agent as users see it: decrypted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agent {
    pub id: i64,
    pub name: String,
    pub alias: String,
    pub level: u8,
    /// The agent's current key generation (see `agent revoke`).
    pub key_generation: u32,
}

/// An agent to add. The password is wiped on drop.
pub struct NewAgent {
    pub name: String,
    pub alias: String,
    pub level: u8,
    pub password: Zeroizing<String>,
}

#[derive(Debug)]
pub enum RegistryError {
    /// Input that breaks a rule; the text says which.
    Invalid(String),
    DuplicateName,
    /// No agent has this AgentId.
    NoSuchAgent(i64),
    /// The row's integrity tag does not match: changed without the key.
    TamperedRow(i64),
    /// A database this home tagged before claims to need tagging again.
    UntaggedAgain,
    /// The acting director would act on, or grant, a level above their own.
    AboveCeiling {
        actor_level: u8,
        level: u8,
    },
    /// A stored value does not open with this home's key (wrong master.key?).
    Undecryptable,
    Db(DbError),
    Hash(password::HashError),
    /// The OS random number generator failed (a new database's identifier).
    Random(getrandom::Error),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Invalid(why) => f.write_str(why),
            RegistryError::DuplicateName => f.write_str("an agent with that name already exists"),
            RegistryError::NoSuchAgent(id) => write!(f, "no agent with AgentId {id}"),
            RegistryError::TamperedRow(id) => write!(
                f,
                "agent row {id} fails its integrity check: it was changed outside spyctl; refusing to trust it"
            ),
            RegistryError::UntaggedAgain => f.write_str(
                "the database asks to have its agent rows tagged again, but this home tagged them before: \
                 it was tampered with; refusing to trust it",
            ),
            RegistryError::AboveCeiling { actor_level, level } => write!(
                f,
                "refused: level {level} is above your own level {actor_level}; nobody grants more than they hold"
            ),
            RegistryError::Undecryptable => f.write_str("a stored value does not decrypt with this home's master key"),
            RegistryError::Db(e) => e.fmt(f),
            RegistryError::Hash(e) => e.fmt(f),
            RegistryError::Random(_) => f.write_str("the OS random number generator failed"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // `Db` and `Hash` show their inner error's text as their own, so the
        // chain continues below it.
        match self {
            RegistryError::Db(e) => e.source(),
            RegistryError::Hash(e) => e.source(),
            RegistryError::Random(e) => Some(e),
            RegistryError::Invalid(_)
            | RegistryError::DuplicateName
            | RegistryError::NoSuchAgent(_)
            | RegistryError::TamperedRow(_)
            | RegistryError::UntaggedAgain
            | RegistryError::AboveCeiling { .. }
            | RegistryError::Undecryptable => None,
        }
    }
}

impl From<DbError> for RegistryError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Duplicate(_) => RegistryError::DuplicateName,
            other => RegistryError::Db(other),
        }
    }
}

impl From<rusqlite::Error> for RegistryError {
    fn from(err: rusqlite::Error) -> Self {
        RegistryError::from(DbError::from(err))
    }
}

fn check_field(what: &str, value: &str) -> Result<(), RegistryError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(RegistryError::Invalid(format!("{what} must not be empty")));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_FIELD_CHARS {
        return Err(RegistryError::Invalid(format!(
            "{what} is {chars} characters long; the limit is {MAX_FIELD_CHARS}"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(RegistryError::Invalid(format!("{what} must not contain control characters")));
    }
    check_precis(what, trimmed)
}

/// RFC 8265 section 3.5: a name is userparts separated by single spaces, each
/// valid under the UsernameCasePreserved profile. That refuses what could make
/// two names look alike or hide text: zero-width and other default-ignorable
/// code points, bidirectional overrides, unassigned and symbol code points.
/// (Letters from different scripts that merely look alike are still allowed.)
fn check_precis(what: &str, value: &str) -> Result<(), RegistryError> {
    use precis_core::Error as Precis;
    use precis_core::profile::PrecisFastInvocation;
    use precis_profiles::UsernameCasePreserved;
    for part in value.split(' ') {
        if part.is_empty() {
            return Err(RegistryError::Invalid(format!("{what} must separate its words with single spaces")));
        }
        match UsernameCasePreserved::prepare(part) {
            Ok(_) => {}
            Err(Precis::BadCodepoint(info)) => {
                return Err(RegistryError::Invalid(format!(
                    "{what} contains U+{:04X}, which is not allowed (invisible, formatting and symbol characters \
                     are refused, RFC 8265)",
                    info.cp
                )));
            }
            Err(_) => {
                return Err(RegistryError::Invalid(format!(
                    "{what} is not a valid name under RFC 8265 (mixed text directions?)"
                )));
            }
        }
    }
    Ok(())
}

/// Checks a level is 1..=5.
pub fn check_level(level: i64) -> Result<u8, RegistryError> {
    u8::try_from(level)
        .ok()
        .filter(|l| (1..=5).contains(l))
        .ok_or_else(|| RegistryError::Invalid(format!("security level {level} is out of range; use 1 to 5")))
}

fn check_password(password: &str) -> Result<(), RegistryError> {
    let len = password.len();
    if len < MIN_PASSWORD_BYTES {
        return Err(RegistryError::Invalid(format!(
            "the password is too short; use at least {MIN_PASSWORD_BYTES} characters"
        )));
    }
    if len > MAX_PASSWORD_BYTES {
        return Err(RegistryError::Invalid(format!(
            "the password is too long; the limit is {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Validates name, alias and level (everything but the password), so a
/// command can refuse bad input before prompting for a password.
pub fn validate_identity(name: &str, alias: &str, level: i64) -> Result<u8, RegistryError> {
    check_field("the name", name)?;
    check_field("the alias", alias)?;
    check_level(level)
}

/// Validates every field of a new agent, before any work is done.
pub fn validate(agent: &NewAgent) -> Result<(), RegistryError> {
    validate_identity(&agent.name, &agent.alias, i64::from(agent.level))?;
    check_password(&agent.password)
}

/// Adds one agent in its own transaction; returns the new AgentId.
pub fn add(conn: &mut Connection, keys: &RegistryKeys, actor: &Agent, agent: &NewAgent) -> Result<i64, RegistryError> {
    validate(agent)?;
    check_ceiling(actor, agent.level)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let id = insert(&tx, keys, agent)?;
    record(&tx, keys, actor, AuditAction::Add { target: id, level: agent.level })?;
    tx.commit()?;
    Ok(id)
}

/// Nobody acts on, or grants, a level above their own.
pub fn check_ceiling(actor: &Agent, level: u8) -> Result<(), RegistryError> {
    if level > actor.level {
        return Err(RegistryError::AboveCeiling { actor_level: actor.level, level });
    }
    Ok(())
}

/// What a director did, as the audit log records it (sealed at rest).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AuditAction {
    Add {
        target: i64,
        level: u8,
    },
    Delete {
        target: i64,
    },
    SetLevel {
        target: i64,
        from: u8,
        to: u8,
    },
    Revoke {
        target: i64,
        generation: u32,
    },
    ExportKey {
        target: i64,
        generation: u32,
    },
    Enroll {
        target: i64,
        expires_at: i64,
    },
    /// `key rotate`: a new master-key epoch.
    RotateKeys {
        epoch: u32,
    },
    /// `key retire`: an epoch's secret removed.
    RetireKeys {
        epoch: u32,
    },
}

/// One audit entry, opened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor_id: i64,
    #[serde(flatten)]
    pub action: AuditAction,
}

fn now_secs() -> i64 {
    crate::crypto::fernet::unix_now() as i64
}

/// Appends an audit entry inside the caller's transaction.
fn record(conn: &Connection, keys: &RegistryKeys, actor: &Agent, action: AuditAction) -> Result<(), RegistryError> {
    let json = serde_json::to_string(&action).map_err(|e| RegistryError::Invalid(format!("audit entry: {e}")))?;
    db::audit::insert(conn, now_secs(), actor.id, &keys.conceal(&json), keys.newest().epoch)?;
    Ok(())
}

/// Records a key-epoch change (`key rotate`, `key retire`) by a director.
pub fn record_key_change(
    conn: &mut Connection,
    keys: &RegistryKeys,
    actor: &Agent,
    action: AuditAction,
) -> Result<(), RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    record(&tx, keys, actor, action)?;
    tx.commit()?;
    Ok(())
}

/// Records a key export (the key itself is never stored).
pub fn record_export(
    conn: &mut Connection,
    keys: &RegistryKeys,
    actor: &Agent,
    target: &Agent,
) -> Result<(), RegistryError> {
    check_ceiling(actor, target.level)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    record(&tx, keys, actor, AuditAction::ExportKey { target: target.id, generation: target.key_generation })?;
    agents::set_wire_epoch(&tx, target.id, keys.newest().epoch)?;
    tx.commit()?;
    Ok(())
}

/// The target agent, if it exists and is within the actor's ceiling.
fn target_within_ceiling(
    conn: &Connection,
    keys: &RegistryKeys,
    actor: &Agent,
    id: i64,
) -> Result<Agent, RegistryError> {
    let target = get(conn, keys, id)?.ok_or(RegistryError::NoSuchAgent(id))?;
    check_ceiling(actor, target.level)?;
    Ok(target)
}

/// Removes an agent at or below the actor's level.
pub fn delete(conn: &mut Connection, keys: &RegistryKeys, actor: &Agent, id: i64) -> Result<Agent, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let target = target_within_ceiling(&tx, keys, actor, id)?;
    agents::delete(&tx, id)?;
    record(&tx, keys, actor, AuditAction::Delete { target: id })?;
    tx.commit()?;
    Ok(target)
}

/// Moves an agent at or below the actor's level to another level, also at
/// or below it. Takes effect at once: every gated command re-reads the level.
pub fn set_level(
    conn: &mut Connection,
    keys: &RegistryKeys,
    actor: &Agent,
    id: i64,
    level: u8,
) -> Result<Agent, RegistryError> {
    let level = check_level(i64::from(level))?;
    check_ceiling(actor, level)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let target = target_within_ceiling(&tx, keys, actor, id)?;
    agents::set_level(&tx, id, level)?;
    tag_row(&tx, keys, id)?;
    record(&tx, keys, actor, AuditAction::SetLevel { target: id, from: target.level, to: level })?;
    tx.commit()?;
    Ok(Agent { level, ..target })
}

/// Replaces an agent's wire key at once by moving it to its next key
/// generation: the old key, every session and every line sealed before are
/// refused from the next request on. Returns the new generation.
pub fn revoke(conn: &mut Connection, keys: &RegistryKeys, actor: &Agent, id: i64) -> Result<u32, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    target_within_ceiling(&tx, keys, actor, id)?;
    let generation = agents::bump_key_generation(&tx, id)?;
    tag_row(&tx, keys, id)?;
    // An enrolled identity goes too (kept in its history as revoked).
    db::identities::revoke(&tx, id, now_secs())?;
    record(&tx, keys, actor, AuditAction::Revoke { target: id, generation })?;
    tx.commit()?;
    Ok(generation)
}

/// Issues a one-time enrolment code for agent `id` (at or below the actor's
/// level), valid for `ttl_secs`. Only the code's hash is stored, sealed under
/// the at-rest key; a new code replaces any earlier one.
pub fn issue_code(
    conn: &mut Connection,
    keys: &RegistryKeys,
    actor: &Agent,
    id: i64,
    ttl_secs: u64,
) -> Result<(crate::net::join::JoinCode, i64), RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    target_within_ceiling(&tx, keys, actor, id)?;
    let code = crate::net::join::JoinCode::generate(id)
        .map_err(|_| RegistryError::Invalid("the OS random number generator failed".into()))?;
    let expires_at = now_secs().saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let sealed = keys.conceal(&zeroize::Zeroizing::new(hex::encode(code.password().as_ref())));
    db::identities::put_code(&tx, id, &sealed, expires_at, actor.id, keys.newest().epoch)?;
    record(&tx, keys, actor, AuditAction::Enroll { target: id, expires_at })?;
    tx.commit()?;
    Ok((code, expires_at))
}

/// The audit log, oldest first, opened.
pub fn audit_log(conn: &Connection, keys: &RegistryKeys) -> Result<Vec<AuditEntry>, RegistryError> {
    db::audit::all(conn)?
        .into_iter()
        .map(|stored| {
            let json = keys.reveal(&stored.entry)?;
            let action = serde_json::from_str(&json).map_err(|_| RegistryError::Undecryptable)?;
            Ok(AuditEntry { at: stored.at, actor_id: stored.actor_id, action })
        })
        .collect()
}

/// Inserts one validated agent inside the caller's transaction.
pub fn insert(conn: &Connection, keys: &RegistryKeys, agent: &NewAgent) -> Result<i64, RegistryError> {
    let name = agent.name.trim();
    let indexes = keys.name_indexes(name);
    // Check first so a duplicate costs no Argon2 work; the UNIQUE constraint
    // still decides if two writers race. Every live epoch's index is checked:
    // during a rewrap a name may still carry its old epoch's index, which
    // the UNIQUE constraint cannot compare with the new one.
    if agents::by_any_name_index(conn, &indexes)?.is_some() {
        return Err(RegistryError::DuplicateName);
    }
    let newest = keys.newest();
    let password_hash = password::hash(agent.password.as_bytes(), &newest.pepper).map_err(RegistryError::Hash)?;
    let id = agents::insert(
        conn,
        &agents::NewStoredAgent {
            name: &keys.conceal(name),
            alias: &keys.conceal(agent.alias.trim()),
            level: agent.level,
            password_hash: &password_hash,
            name_index: &indexes[0],
            key_epoch: newest.epoch,
        },
    )?;
    tag_row(conn, keys, id)?;
    Ok(id)
}

/// Rewrap (`key rotate`): moves agent `id`'s row to the newest key epoch
/// inside the caller's transaction: name and alias sealed again (keeping
/// their timestamps, as `MultiFernet.rotate` does), the blind index and the
/// login records that use it recomputed, the row tagged under the newest
/// row key. A row that fails its tag is refused, never carried over. The
/// password hash stays until the agent's next login (it needs the
/// password). False if the row was already in the newest epoch or is gone.
pub fn rewrap_agent(conn: &Connection, keys: &RegistryKeys, id: i64) -> Result<bool, RegistryError> {
    let Some(row) = agents::by_id(conn, id)? else { return Ok(false) };
    let newest = keys.newest();
    if row.key_epoch == newest.epoch {
        return Ok(false);
    }
    check_row(keys, &row)?;
    let from: Vec<&FernetKey> = keys.epochs.iter().map(|k| &k.at_rest).collect();
    let rotate = |token: &str| newest.at_rest.rotate(token.as_bytes(), &from).map_err(|_| RegistryError::Undecryptable);
    let name = rotate(&row.name)?;
    let alias = rotate(&row.alias)?;
    let plain_name = Zeroizing::new(keys.reveal(&row.name)?);
    let index = newest.blind_index.index(&plain_name);
    agents::set_sealed(conn, id, &name, &alias, &index, newest.epoch)?;
    logins::reindex(conn, &row.name_index, &index, newest.epoch)?;
    tag_row(conn, keys, id)?;
    Ok(true)
}

/// A retired epoch's pepper from its sealed form (hex under an at-rest key).
fn unseal_pepper(keys: &RegistryKeys, sealed: &str) -> Option<Zeroizing<[u8; 32]>> {
    let text = Zeroizing::new(keys.reveal(sealed).ok()?);
    let mut pepper = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.as_str(), pepper.as_mut()).ok()?;
    Some(pepper)
}

/// Decrypts one stored row.
pub fn reveal(keys: &RegistryKeys, stored: &agents::StoredAgent) -> Result<Agent, RegistryError> {
    check_row(keys, stored)?;
    Ok(Agent {
        id: stored.id,
        name: keys.reveal(&stored.name)?,
        alias: keys.reveal(&stored.alias)?,
        level: stored.level,
        key_generation: stored.key_generation,
    })
}

pub fn get(conn: &Connection, keys: &RegistryKeys, id: i64) -> Result<Option<Agent>, RegistryError> {
    agents::by_id(conn, id)?.map(|s| reveal(keys, &s)).transpose()
}

/// Agents a viewer at `viewer_level` may see: those at or below it.
pub fn visible_to(conn: &Connection, keys: &RegistryKeys, viewer_level: u8) -> Result<Vec<Agent>, RegistryError> {
    agents::at_or_below(conn, viewer_level)?.iter().map(|s| reveal(keys, s)).collect()
}

/// Why a login was refused.
#[derive(Debug)]
pub enum LoginError {
    /// Unknown name or wrong password: one answer for both.
    BadCredentials,
    /// Too many failures; try again after this Unix time.
    Locked {
        until: i64,
    },
    Other(RegistryError),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::BadCredentials => f.write_str("login failed: unknown name or wrong password"),
            LoginError::Locked { .. } => f.write_str("login refused: too many failed attempts"),
            LoginError::Other(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoginError::Other(e) => e.source(),
            LoginError::BadCredentials | LoginError::Locked { .. } => None,
        }
    }
}

impl From<RegistryError> for LoginError {
    fn from(err: RegistryError) -> Self {
        LoginError::Other(err)
    }
}

impl From<DbError> for LoginError {
    fn from(err: DbError) -> Self {
        LoginError::Other(err.into())
    }
}

impl From<rusqlite::Error> for LoginError {
    fn from(err: rusqlite::Error) -> Self {
        LoginError::Other(err.into())
    }
}

/// Checks a name and password. The typed name becomes its blind index before
/// it reaches a query; the password never enters one. An unknown name costs
/// one Argon2 verification like a known one. Failures are counted per blind
/// index, known or not, and lock the name after [`LOCKOUT_THRESHOLD`].
pub fn login(
    conn: &mut Connection,
    keys: &RegistryKeys,
    name: &str,
    password: &str,
    now: i64,
) -> Result<Agent, LoginError> {
    let indexes = keys.name_indexes(name);
    let newest = keys.newest();
    // Reserve before verifying: the lock check and this attempt's failure
    // record happen in one IMMEDIATE transaction, so however many guesses run
    // in parallel, at most LOCKOUT_THRESHOLD of them get a password check per
    // window. A successful check then takes the record back.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(until) = logins::locked_until(&tx, &indexes, now)? {
        return Err(LoginError::Locked { until });
    }
    let failures = logins::record_failure(&tx, &indexes, newest.epoch, now, now - LOCKOUT_WINDOW_SECS)?;
    let locks_now = failures >= LOCKOUT_THRESHOLD;
    if locks_now {
        logins::lock(&tx, &indexes, newest.epoch, now + LOCKOUT_SECS)?;
    }
    let stored = agents::by_any_name_index(&tx, &indexes)?;
    // A hash made in a since-retired epoch: that epoch's pepper was kept,
    // sealed under a live one (see `epochs::retire`).
    let kept_pepper = match &stored {
        Some(agent) if keys.at(agent.pepper_epoch).is_none() => {
            db::epochs::sealed_pepper(&tx, agent.pepper_epoch)?.and_then(|sealed| unseal_pepper(keys, &sealed))
        }
        _ => None,
    };
    tx.commit()?;
    // A row changed without the key (a copied hash, a raised level) is
    // refused before its hash is even tried.
    if let Some(agent) = &stored {
        check_row(keys, agent)?;
    }

    // The slow part, outside any transaction so other logins are not blocked.
    let ok = match &stored {
        Some(agent) => match keys.at(agent.pepper_epoch).map(|k| &k.pepper).or(kept_pepper.as_ref()) {
            Some(epoch_pepper) => {
                let pepper = agent.password_peppered.then_some(&**epoch_pepper);
                password::verify(password.as_bytes(), &agent.password_hash, pepper)
            }
            // No pepper for its epoch (only a changed row gets here): the
            // same cost, never a match.
            None => {
                let _ = password::verify_unknown(password.as_bytes(), &newest.pepper);
                false
            }
        },
        None => password::verify_unknown(password.as_bytes(), &newest.pepper),
    };
    match stored {
        Some(agent) if ok => {
            // A hash from before peppering, or peppered in an older key
            // epoch, is replaced now that the password is known.
            let rehash = if agent.password_peppered && agent.pepper_epoch == newest.epoch {
                None
            } else {
                Some(password::hash(password.as_bytes(), &newest.pepper).map_err(RegistryError::Hash)?)
            };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            logins::clear(&tx, &indexes)?;
            if let Some(hash) = &rehash {
                agents::set_password(&tx, agent.id, hash, true, newest.epoch)?;
                tag_row(&tx, keys, agent.id)?;
                // The last hash that needed a retired epoch's pepper takes it along.
                db::epochs::drop_unused_peppers(&tx)?;
            }
            tx.commit()?;
            Ok(reveal(keys, &agent)?)
        }
        _ if locks_now => Err(LoginError::Locked { until: now + LOCKOUT_SECS }),
        _ => Err(LoginError::BadCredentials),
    }
}

/// A sample agent for `db init`. The passwords are public on purpose (README):
/// they let a newcomer log in to a fresh demo database.
pub struct SampleAgent {
    pub name: &'static str,
    pub alias: &'static str,
    pub level: u8,
    pub password: &'static str,
}

pub const SAMPLE_AGENTS: &[SampleAgent] = &[
    SampleAgent { name: "Ethan Hunt", alias: "Impossible", level: 5, password: "mission-accepted-96" },
    SampleAgent { name: "Natasha Romanoff", alias: "Black Widow", level: 4, password: "red-ledger-1984" },
    SampleAgent { name: "George Smiley", alias: "Beggarman", level: 3, password: "karla-circus-74" },
    SampleAgent { name: "Emma Peel", alias: "Mrs Peel", level: 3, password: "bowler-and-umbrella" },
    SampleAgent { name: "Harry Palmer", alias: "Ipcress", level: 2, password: "funeral-in-berlin" },
    SampleAgent { name: "Jason Bourne", alias: "Treadstone", level: 2, password: "who-am-i-2002" },
    SampleAgent { name: "Maxwell Smart", alias: "Agent 86", level: 1, password: "missed-it-by-that-much" },
    SampleAgent { name: "Boris Grishenko", alias: "Invincible", level: 1, password: "i-am-invincible" },
];

/// Drops and recreates every table, then adds the sample agents, inside the
/// caller's transaction (which holds the write lock from before its backup):
/// on any failure the old database is untouched.
///
/// The new database gets a fresh random identifier, and every key is bound
/// to it (returned as the [`KeyRing`]): nothing made for the old database is
/// honoured by the new one. AgentIds still keep counting from where the old
/// table stopped, so no log or row ever names two agents with one id.
pub fn init_with_samples(
    tx: &rusqlite::Transaction<'_>,
    master: &MasterKeys,
) -> Result<(Vec<Agent>, KeyRing), RegistryError> {
    let mut database_id = [0u8; db::DATABASE_ID_BYTES];
    getrandom::fill(&mut database_id).map_err(RegistryError::Random)?;
    // A new database starts in the home's newest key epoch.
    let epoch = master.newest_epoch();
    let keyring = master.bind(&database_id, &[epoch]).map_err(|_| RegistryError::Undecryptable)?;
    let keys = &RegistryKeys::derive(&keyring);
    let high_water = agents::id_high_water(tx)?;
    db::apply_schema(tx, &database_id)?;
    db::epochs::add(tx, epoch, now_secs(), keyring.check_value(epoch).as_deref())?;
    agents::keep_ids_above(tx, high_water)?;
    let mut added = Vec::with_capacity(SAMPLE_AGENTS.len());
    for sample in SAMPLE_AGENTS {
        let agent = NewAgent {
            name: sample.name.to_string(),
            alias: sample.alias.to_string(),
            level: sample.level,
            password: Zeroizing::new(sample.password.to_string()),
        };
        let id = insert(tx, keys, &agent)?;
        added.push(Agent { id, name: agent.name, alias: agent.alias, level: agent.level, key_generation: 0 });
    }
    Ok((added, keyring))
}

/// The sample agent the demo script deletes, the one it promotes, and how.
pub const DEMO_DELETED: &str = "Boris Grishenko";
pub const DEMO_PROMOTED: &str = "Harry Palmer";
pub const DEMO_NEW_ALIAS: &str = "Harry the Handler";
pub const DEMO_NEW_LEVEL: u8 = 3;

/// Runs the demo script's DELETE and UPDATE (sql/demo_delete.sql,
/// sql/demo_update.sql) in one transaction, finding both agents by the blind
/// index of their names. Returns the rows each affected.
pub fn apply_demo_changes(conn: &mut Connection, keys: &RegistryKeys) -> Result<(usize, usize), RegistryError> {
    use crate::db::demo;
    let deleted_index = keys.newest().blind_index.index(DEMO_DELETED);
    let promoted_index = keys.newest().blind_index.index(DEMO_PROMOTED);
    let new_alias = keys.conceal(DEMO_NEW_ALIAS);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let deleted =
        tx.execute(&demo::statement(demo::DELETE_ONE), rusqlite::named_params! { ":name_index": deleted_index })?;
    let updated = tx.execute(
        &demo::statement(demo::UPDATE_ONE),
        rusqlite::named_params! { ":level": DEMO_NEW_LEVEL, ":alias": new_alias, ":name_index": promoted_index },
    )?;
    // The script's UPDATE is the course's plain SQL; the row it changed gets
    // its integrity tag again in the same transaction.
    if let Some(promoted) = agents::by_name_index(&tx, &promoted_index)? {
        tag_row(&tx, keys, promoted.id)?;
    }
    tx.commit()?;
    Ok((deleted, updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as a version-3 build left it and its migration to version
    /// 4 found it: an agent whose hash has no pepper, no row tag, and the
    /// mark that rows await tagging.
    fn legacy_database(keys: &RegistryKeys) -> (tempfile::TempDir, Connection) {
        use argon2::password_hash::PasswordHasher;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = db::create(&dir.path().join("spyctl.db")).expect("create");
        let tx = conn.transaction().expect("tx");
        db::apply_schema(&tx, &[7u8; db::DATABASE_ID_BYTES]).expect("schema");
        tx.commit().expect("commit");
        let params = argon2::Params::new(password::MEMORY_KIB, password::PASSES, password::LANES, None).expect("p");
        let unpeppered = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_with_salt(b"an-old-password", b"0123456789abcdef")
            .expect("hash")
            .to_string();
        conn.execute(
            "INSERT INTO Agents (AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex, \
             PasswordPeppered, RowMac) VALUES (?1, ?2, 4, ?3, ?4, 0, NULL)",
            rusqlite::params![
                keys.conceal("Old Timer"),
                keys.conceal("Veteran"),
                unpeppered,
                keys.newest().blind_index.index("Old Timer")
            ],
        )
        .expect("legacy row");
        conn.execute("INSERT INTO Meta (Name, Value) VALUES ('rows-untagged', X'01')", []).expect("mark");
        (dir, conn)
    }

    #[test]
    fn migrated_rows_are_tagged_once_and_old_hashes_get_the_pepper_at_the_next_login() {
        let keys =
            RegistryKeys::derive(&crate::crypto::MasterKey::from_bytes([3u8; 32]).bind(&[7u8; db::DATABASE_ID_BYTES]));
        let (_dir, mut conn) = legacy_database(&keys);
        let untagged =
            agents::by_name_index(&conn, &keys.newest().blind_index.index("Old Timer")).expect("q").expect("row");
        assert!(matches!(check_row(&keys, &untagged), Err(RegistryError::TamperedRow(_))), "untagged is untrusted");
        assert!(matches!(seal_untagged_rows(&mut conn, &keys, true), Err(RegistryError::UntaggedAgain)));
        assert_eq!(seal_untagged_rows(&mut conn, &keys, false).expect("tag"), 1);
        assert_eq!(seal_untagged_rows(&mut conn, &keys, false).expect("once"), 0, "the mark is gone");
        let agent = login(&mut conn, &keys, "Old Timer", "an-old-password", 1_000).expect("the old hash still works");
        assert_eq!(agent.level, 4);
        let row = agents::by_id(&conn, agent.id).expect("q").expect("row");
        assert!(row.password_peppered, "re-hashed with the pepper at login");
        check_row(&keys, &row).expect("and tagged again");
        login(&mut conn, &keys, "Old Timer", "an-old-password", 1_001).expect("the peppered hash works");
        assert!(matches!(
            login(&mut conn, &keys, "Old Timer", "wrong-password", 1_002),
            Err(LoginError::BadCredentials)
        ));
    }

    #[test]
    fn names_refuse_invisible_and_bidi_characters() {
        for sample in SAMPLE_AGENTS {
            assert!(check_field("the name", sample.name).is_ok(), "{}", sample.name);
            assert!(check_field("the alias", sample.alias).is_ok(), "{}", sample.alias);
        }
        for fine in ["Zoë O'Brien", "Agent 86", "José-María", "Harry the Handler"] {
            assert!(check_field("the name", fine).is_ok(), "{fine}");
        }
        for (bad, cp) in [
            ("Ethan\u{200B} Hunt", "U+200B"),
            ("Ethan Hunt\u{200D}", "U+200D"),
            ("invoice\u{202E}fdp", "U+202E"),
            ("Ethan\u{2066}Hunt", "U+2066"),
            ("Ethan\u{FEFF}Hunt", "U+FEFF"),
        ] {
            match check_field("the name", bad) {
                Err(RegistryError::Invalid(why)) => assert!(why.contains(cp), "{bad:?}: {why}"),
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        assert!(check_field("the name", "Ethan  Hunt").is_err(), "double space");
    }
}
