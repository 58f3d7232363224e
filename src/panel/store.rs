//! All SQL against the panel database.

use sqlx::PgConnection;
use sqlx::postgres::PgPool;
use sqlx::types::Json;

use super::access::{
    AuditRecord, ManifestVersion, NewAudit, OperatorRecord, SessionRecord, TextVersion,
};
use super::{BotRecord, BotStatus, InstanceRecord, PanelError, SecretRecord, TextRecord};
use crate::content::manifest::Manifest;
use crate::crypto::{KeyId, Keyring, secret_aad, token_aad};
use crate::token::BotToken;

const SELECT_BOTS: &str = "\
    SELECT b.id, b.name, b.token AS token_clear, b.token_sealed, b.enabled, b.database, b.manifest, b.version, \
           b.created_at, b.updated_at, b.mode, b.webhook_secret_sealed, b.db_server, \
           COALESCE(t.n, 0) AS texts_count, t.latest AS texts_updated_at, \
           COALESCE(s.n, 0) AS secrets_count, s.latest AS secrets_updated_at \
    FROM bots b \
    LEFT JOIN (SELECT bot_id, count(*) AS n, max(updated_at) AS latest \
               FROM bot_texts GROUP BY bot_id) t ON t.bot_id = b.id \
    LEFT JOIN (SELECT bot_id, count(*) AS n, max(updated_at) AS latest \
               FROM bot_secrets GROUP BY bot_id) s ON s.bot_id = b.id";

/// A bot to register.
#[derive(Debug)]
pub struct NewBot<'a> {
    /// Unique name.
    pub name: &'a str,
    /// Validated token.
    pub token: &'a BotToken,
    /// Start it right away.
    pub enabled: bool,
    /// Database override (name or URL).
    pub database: Option<&'a str>,
    /// Validated manifest.
    pub manifest: &'a Manifest,
}

/// A status report from the bot's owner.
#[derive(Debug, Clone)]
pub struct StatusUpdate<'a> {
    /// The bot.
    pub bot_id: i64,
    /// This instance's name.
    pub instance: &'a str,
    /// The state name.
    pub state: &'a str,
    /// A readable detail.
    pub detail: &'a str,
    /// The Telegram username, when known (kept when `None`).
    pub telegram_username: Option<&'a str>,
    /// Set `started_at = now()` (a new run began).
    pub started: bool,
}

fn map_unique(e: sqlx::Error, name: &str) -> PanelError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
    {
        match db.constraint() {
            Some("bots_name_key") => return PanelError::DuplicateName(name.to_owned()),
            Some("bots_token_key" | "bots_token_hash_key") => {
                return PanelError::DuplicateToken {
                    holder: "another bot".into(),
                };
            }
            _ => {}
        }
    }
    PanelError::Database(e)
}

/// The bot (other than `except`) that already has `token`, as `bot 3 (shop)`: found by its
/// keyed hash under every held key (a rotation may be half-way), or in clear in a row not
/// sealed yet.
pub async fn token_holder(
    pool: &PgPool,
    keys: &Keyring,
    token: &BotToken,
    except: Option<i64>,
) -> Result<Option<String>, PanelError> {
    let holder: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, name FROM bots \
         WHERE (token_hash = ANY($1) OR token = $2) AND id IS DISTINCT FROM $3 LIMIT 1",
    )
    .bind(keys.token_hashes(token.expose()))
    .bind(token.expose())
    .bind(except)
    .fetch_optional(pool)
    .await?;
    Ok(holder.map(|(id, name)| format!("bot {id} ({name})")))
}

/// Registers a bot and returns its id. The token is stored sealed (bound to the new id) with
/// its keyed hash; a token another bot has is refused, naming that bot.
pub async fn add_bot(pool: &PgPool, keys: &Keyring, bot: &NewBot<'_>) -> Result<i64, PanelError> {
    if let Some(holder) = token_holder(pool, keys, bot.token, None).await? {
        return Err(PanelError::DuplicateToken { holder });
    }
    let mut conn = pool.acquire().await?;
    let row = (bot.enabled, bot.database, None);
    insert_bot(
        &mut conn,
        keys,
        bot.name,
        Some(bot.token),
        row,
        bot.manifest,
    )
    .await
}

/// Servers a new bot's database may be placed on, as `(server key, weight)` in the settings'
/// order (see [`place_bot`]).
pub type Placement<'a> = &'a [(String, u32)];

/// Chooses the server of a new bot inside `tx`: the one with the fewest bots per weight
/// (bots with no recorded server count for the first; bots whose override is a URL count
/// nowhere), ties to the first listed. Holds a transaction-level advisory lock so two adds at
/// once see each other's choice. `None` when `servers` is empty.
async fn place_bot(
    conn: &mut PgConnection,
    servers: Placement<'_>,
) -> Result<Option<String>, PanelError> {
    if servers.is_empty() {
        return Ok(None);
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('botvisor bot placement', 0))")
        .execute(&mut *conn)
        .await?;
    let counts: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT db_server, count(*) FROM bots \
         WHERE database IS NULL OR database NOT LIKE '%://%' GROUP BY db_server",
    )
    .fetch_all(&mut *conn)
    .await?;
    let best = crate::settings::place(servers, &counts);
    Ok(servers.get(best).map(|(key, _)| key.clone()))
}

/// Every bot's recorded database server (`None`: the first configured), by id.
pub async fn bot_servers(pool: &PgPool) -> Result<Vec<(i64, Option<String>)>, PanelError> {
    Ok(sqlx::query_as("SELECT id, db_server FROM bots ORDER BY id")
        .fetch_all(pool)
        .await?)
}

/// Records that bot `id`'s database now lives on `server` (`expected`: the server it was
/// on, so a concurrent move is refused rather than overwritten), with its `bot.move` audit
/// entry, in one transaction: the commit point of `botvisor bot move`.
pub async fn set_db_server_audited(
    pool: &PgPool,
    id: i64,
    expected: Option<&str>,
    server: Option<&str>,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let change = sqlx::query(
        "UPDATE bots SET db_server = $3 WHERE id = $1 AND db_server IS NOT DISTINCT FROM $2",
    )
    .bind(id)
    .bind(expected)
    .bind(server);
    change_bot_audited(pool, id, "", change, audit).await
}

/// [`add_bot`] with its audit entry (given the new id) and the first manifest version's
/// actor in the same transaction: a bot never exists without its `bot.add` entry. Its
/// database server is chosen among `placement` in the same transaction ([`place_bot`]).
pub async fn add_bot_audited<'a>(
    pool: &PgPool,
    keys: &Keyring,
    bot: &NewBot<'_>,
    placement: Placement<'_>,
    actor: &str,
    audit: impl FnOnce(i64) -> NewAudit<'a>,
) -> Result<i64, PanelError> {
    if let Some(holder) = token_holder(pool, keys, bot.token, None).await? {
        return Err(PanelError::DuplicateToken { holder });
    }
    let mut tx = begin_as(pool, actor).await?;
    let server = place_bot(&mut tx, placement).await?;
    let row = (bot.enabled, bot.database, server.as_deref());
    let id = insert_bot(&mut tx, keys, bot.name, Some(bot.token), row, bot.manifest).await?;
    insert_audit_on(&mut tx, &audit(id)).await?;
    tx.commit().await?;
    Ok(id)
}

/// Sets a bot's update mode (`None`: the settings' default) with its audit entry, in one
/// transaction.
pub async fn set_mode_audited(
    pool: &PgPool,
    id: i64,
    mode: Option<&str>,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let change = sqlx::query("UPDATE bots SET mode = $2 WHERE id = $1")
        .bind(id)
        .bind(mode);
    change_bot_audited(pool, id, "", change, audit).await
}

/// A bot recreated from an export archive: registered disabled, with its texts.
#[derive(Debug)]
pub struct ImportedBot<'a> {
    /// Unique name.
    pub name: &'a str,
    /// The token, when the archive carried one another bot does not have; `None`: no token
    /// until `bot set-token`.
    pub token: Option<&'a BotToken>,
    /// Validated manifest.
    pub manifest: &'a Manifest,
    /// Texts as `(key, lang, value)`.
    pub texts: &'a [(String, String, String)],
    /// The archived history of its texts and manifest.
    pub versions: &'a ArchivedVersions,
    /// Who imports (the history's closing entries name `import:<actor>`).
    pub actor: &'a str,
    /// Servers its database may go on ([`place_bot`]).
    pub placement: Placement<'a>,
}

/// A bot's text and manifest versions as an archive carries them, oldest first.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedVersions {
    /// Text versions, in the order they were written.
    pub texts: Vec<TextVersion>,
    /// Manifest versions, in the order they were written.
    pub manifests: Vec<ManifestVersion>,
}

/// Registers an imported bot, disabled and on the naming rule's database, with its texts and
/// its archived versions (see [`replace_versions`]), in one transaction; returns its id. A
/// token another bot has is refused, naming that bot.
pub async fn add_imported_bot(
    pool: &PgPool,
    keys: &Keyring,
    bot: &ImportedBot<'_>,
) -> Result<i64, PanelError> {
    for (key, lang, value) in bot.texts {
        validated(key, lang, value)?;
    }
    if let Some(token) = bot.token
        && let Some(holder) = token_holder(pool, keys, token, None).await?
    {
        return Err(PanelError::DuplicateToken { holder });
    }
    let actor = format!("import:{}", bot.actor);
    let mut tx = begin_as(pool, &actor).await?;
    let server = place_bot(&mut tx, bot.placement).await?;
    let id = insert_bot(
        &mut tx,
        keys,
        bot.name,
        bot.token,
        (false, None, server.as_deref()),
        bot.manifest,
    )
    .await?;
    insert_texts(&mut tx, id, bot.texts).await?;
    replace_versions(&mut tx, id, bot.versions, &actor).await?;
    tx.commit().await?;
    Ok(id)
}

/// A bot's panel rows as an in-place import restores them.
#[derive(Debug)]
pub struct RestoredBot<'a> {
    /// Its name (unique).
    pub name: &'a str,
    /// A new token; `None`: the bot keeps its own.
    pub token: Option<&'a BotToken>,
    /// Validated manifest.
    pub manifest: &'a Manifest,
    /// Its texts as `(key, lang, value)`: they replace every text it has.
    pub texts: &'a [(String, String, String)],
    /// Its history: it replaces the bot's (see [`replace_versions`]).
    pub versions: &'a ArchivedVersions,
    /// Who imports.
    pub actor: &'a str,
}

/// Replaces bot `id`'s name, manifest, texts and versions (and its token, when given) in one
/// transaction. Running it twice gives the same rows. The enabled flag, the database override
/// and the secrets are left as they are.
pub async fn restore_bot_rows(
    pool: &PgPool,
    keys: Option<&Keyring>,
    id: i64,
    bot: &RestoredBot<'_>,
) -> Result<(), PanelError> {
    for (key, lang, value) in bot.texts {
        validated(key, lang, value)?;
    }
    if let Some(token) = bot.token
        && let Some(keys) = keys
        && let Some(holder) = token_holder(pool, keys, token, Some(id)).await?
    {
        return Err(PanelError::DuplicateToken { holder });
    }
    let actor = format!("import:{}", bot.actor);
    let mut tx = begin_as(pool, &actor).await?;
    let r = sqlx::query("UPDATE bots SET name = $2, manifest = $3 WHERE id = $1")
        .bind(id)
        .bind(bot.name)
        .bind(Json(bot.manifest.to_value()))
        .execute(&mut *tx)
        .await;
    expect_one(r, id, bot.name)?;
    if let (Some(token), Some(keys)) = (bot.token, keys) {
        let key = keys.current();
        sqlx::query(
            "UPDATE bots SET token = NULL, token_sealed = $2, token_hash = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(key.seal(&token_aad(id), token.expose().as_bytes())?)
        .bind(key.token_hash(token.expose()))
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, bot.name))?;
    }
    sqlx::query("DELETE FROM bot_texts WHERE bot_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    insert_texts(&mut tx, id, bot.texts).await?;
    replace_versions(&mut tx, id, bot.versions, &actor).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts texts (the bot has none of these keys yet).
async fn insert_texts(
    conn: &mut sqlx::PgConnection,
    id: i64,
    texts: &[(String, String, String)],
) -> Result<(), PanelError> {
    for (key, lang, value) in texts {
        sqlx::query("INSERT INTO bot_texts (bot_id, key, lang, value) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(key)
            .bind(lang)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Replaces bot `id`'s versions with `versions`, in the transaction that just wrote its texts
/// and manifest: the entries the version triggers wrote for those writes are deleted with the
/// rest, the archived ones inserted as they were (numbers, actors, times), and then one entry
/// by `actor` closes each history that does not end in the value the bot now has (a text or
/// manifest older than the version tables, or a text the history still shows and the bot no
/// longer has). An import therefore adds at most one version per text and manifest, and none
/// when the archive's history is complete; running it twice gives the same rows.
pub async fn replace_versions(
    conn: &mut sqlx::PgConnection,
    id: i64,
    versions: &ArchivedVersions,
    actor: &str,
) -> Result<(), PanelError> {
    for table in ["text_versions", "manifest_versions"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE bot_id = $1"
        )))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    for v in &versions.texts {
        sqlx::query(
            "INSERT INTO text_versions (bot_id, key, lang, version, previous, value, actor, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&v.key)
        .bind(&v.lang)
        .bind(v.version)
        .bind(&v.previous)
        .bind(&v.value)
        .bind(&v.actor)
        .bind(v.at)
        .execute(&mut *conn)
        .await?;
    }
    for v in &versions.manifests {
        sqlx::query(
            "INSERT INTO manifest_versions (bot_id, version, previous, manifest, actor, at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(v.version)
        .bind(&v.previous)
        .bind(&v.manifest)
        .bind(&v.actor)
        .bind(v.at)
        .execute(&mut *conn)
        .await?;
    }
    // Texts whose history ends elsewhere than in their value (or is empty).
    sqlx::query(
        "INSERT INTO text_versions (bot_id, key, lang, version, previous, value, actor) \
         SELECT t.bot_id, t.key, t.lang, COALESCE(v.version, 0) + 1, v.value, t.value, $2 \
         FROM bot_texts t \
         LEFT JOIN LATERAL (SELECT version, value FROM text_versions \
                            WHERE bot_id = t.bot_id AND key = t.key AND lang = t.lang \
                            ORDER BY version DESC LIMIT 1) v ON true \
         WHERE t.bot_id = $1 AND v.value IS DISTINCT FROM t.value",
    )
    .bind(id)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    // Texts the history shows present that the bot does not have.
    sqlx::query(
        "INSERT INTO text_versions (bot_id, key, lang, version, previous, value, actor) \
         SELECT bot_id, key, lang, version + 1, value, NULL, $2 FROM ( \
             SELECT DISTINCT ON (key, lang) bot_id, key, lang, version, value \
             FROM text_versions WHERE bot_id = $1 ORDER BY key, lang, version DESC) last \
         WHERE value IS NOT NULL AND NOT EXISTS ( \
             SELECT 1 FROM bot_texts t \
             WHERE t.bot_id = last.bot_id AND t.key = last.key AND t.lang = last.lang)",
    )
    .bind(id)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO manifest_versions (bot_id, version, previous, manifest, actor) \
         SELECT b.id, COALESCE(m.version, 0) + 1, m.manifest, b.manifest, $2 FROM bots b \
         LEFT JOIN LATERAL (SELECT version, manifest FROM manifest_versions \
                            WHERE bot_id = b.id ORDER BY version DESC LIMIT 1) m ON true \
         WHERE b.id = $1 AND m.manifest IS DISTINCT FROM b.manifest",
    )
    .bind(id)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Bot `id`'s text and manifest versions, oldest first, for an archive.
pub async fn all_versions(pool: &PgPool, id: i64) -> Result<ArchivedVersions, PanelError> {
    ensure_bot(pool, id).await?;
    let texts = sqlx::query_as(
        "SELECT version, key, lang, previous, value, actor, at FROM text_versions \
         WHERE bot_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let manifests = sqlx::query_as(
        "SELECT version, previous, manifest, actor, at FROM manifest_versions \
         WHERE bot_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(ArchivedVersions { texts, manifests })
}

/// The id of the bot other than `except` named `name`, if any.
pub async fn name_holder(
    pool: &PgPool,
    name: &str,
    except: i64,
) -> Result<Option<i64>, PanelError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM bots WHERE name = $1 AND id <> $2")
            .bind(name)
            .bind(except)
            .fetch_optional(pool)
            .await?,
    )
}

/// Takes the session advisory lock that lets only one in-place import into bot `id` run at a
/// time, on a connection of its own (detached from the pool: the lock lives as long as the
/// session, so closing or dropping the connection releases it); `None` when another session
/// holds it.
pub async fn try_lock_import(
    pool: &PgPool,
    id: i64,
) -> Result<Option<sqlx::PgConnection>, PanelError> {
    let mut conn = pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('botvisor in-place import ' || $1::text, 0))",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await?;
    Ok(got.then_some(conn))
}

/// Whether daemon instance `name` has a heartbeat younger than `live_within_secs`.
pub async fn instance_alive(
    pool: &PgPool,
    name: &str,
    live_within_secs: f64,
) -> Result<bool, PanelError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM instances WHERE name = $1 \
         AND heartbeat_at > clock_timestamp() - make_interval(secs => $2))",
    )
    .bind(name)
    .bind(live_within_secs)
    .fetch_one(pool)
    .await?)
}

/// Inserts a bot row (`(enabled, database override, database server)`), its token (if any)
/// sealed under the new id, and returns the id.
async fn insert_bot(
    conn: &mut sqlx::PgConnection,
    keys: &Keyring,
    name: &str,
    token: Option<&BotToken>,
    (enabled, database, server): (bool, Option<&str>, Option<&str>),
    manifest: &Manifest,
) -> Result<i64, PanelError> {
    // The id is the associated data of the sealed token, so it is taken first.
    let id: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('bots', 'id'))")
        .fetch_one(&mut *conn)
        .await?;
    let key = keys.current();
    let (sealed, hash) = match token {
        Some(token) => (
            Some(key.seal(&token_aad(id), token.expose().as_bytes())?),
            Some(key.token_hash(token.expose())),
        ),
        None => (None, None),
    };
    let result = sqlx::query(
        "INSERT INTO bots (id, name, token, token_sealed, token_hash, enabled, database, manifest, \
                           db_server) \
         VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(name)
    .bind(sealed)
    .bind(hash)
    .bind(enabled)
    .bind(database)
    .bind(Json(manifest.to_value()))
    .bind(server)
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(id),
        Err(e) => Err(map_unique(e, name)),
    }
}

/// Every bot's id, database override (`None`: the naming rule) and recorded server (`None`:
/// the first configured), ordered by id.
pub async fn list_database_overrides(
    pool: &PgPool,
) -> Result<Vec<(i64, Option<String>, Option<String>)>, PanelError> {
    Ok(
        sqlx::query_as("SELECT id, database, db_server FROM bots ORDER BY id")
            .fetch_all(pool)
            .await?,
    )
}

/// Every registered bot, ordered by id.
pub async fn list_bots(pool: &PgPool) -> Result<Vec<BotRecord>, PanelError> {
    let sql = format!("{SELECT_BOTS} ORDER BY b.id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?)
}

/// One bot.
pub async fn get_bot(pool: &PgPool, id: i64) -> Result<BotRecord, PanelError> {
    let sql = format!("{SELECT_BOTS} WHERE b.id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(PanelError::BotNotFound(id))
}

/// Every status row, ordered by bot id.
pub async fn list_statuses(pool: &PgPool) -> Result<Vec<BotStatus>, PanelError> {
    Ok(sqlx::query_as(
        "SELECT bot_id, instance, state, detail, telegram_username, started_at, updated_at, \
                webhook_url, webhook_pending_update_count, webhook_last_error_at, \
                webhook_last_error, webhook_checked_at, updates_per_min, sent_per_min, \
                traffic_at \
         FROM bot_status ORDER BY bot_id",
    )
    .fetch_all(pool)
    .await?)
}

/// The status of one bot, if any was reported.
pub async fn get_status(pool: &PgPool, id: i64) -> Result<Option<BotStatus>, PanelError> {
    Ok(sqlx::query_as(
        "SELECT bot_id, instance, state, detail, telegram_username, started_at, updated_at, \
                webhook_url, webhook_pending_update_count, webhook_last_error_at, \
                webhook_last_error, webhook_checked_at, updates_per_min, sent_per_min, \
                traffic_at \
         FROM bot_status WHERE bot_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Writes a bot's status; a bot removed meanwhile is silently skipped. Notifies nothing.
pub async fn upsert_status(pool: &PgPool, s: &StatusUpdate<'_>) -> Result<(), PanelError> {
    upsert_statuses(pool, std::slice::from_ref(s)).await
}

/// [`upsert_status`] for several bots in one statement (at most one row per bot: the batch
/// of `control::status` merges a bot's writes); rows of bots no longer in the panel are
/// skipped.
pub async fn upsert_statuses(pool: &PgPool, rows: &[StatusUpdate<'_>]) -> Result<(), PanelError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.bot_id).collect();
    let instances: Vec<&str> = rows.iter().map(|r| r.instance).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state).collect();
    let details: Vec<&str> = rows.iter().map(|r| r.detail).collect();
    let usernames: Vec<Option<&str>> = rows.iter().map(|r| r.telegram_username).collect();
    let started: Vec<bool> = rows.iter().map(|r| r.started).collect();
    // `started_at` is set only for a started row, so `EXCLUDED.started_at IS NOT NULL` is
    // that row's `started`.
    sqlx::query(
        "INSERT INTO bot_status (bot_id, instance, state, detail, telegram_username, started_at) \
         SELECT u.bot_id, u.instance, u.state, u.detail, u.username, \
                CASE WHEN u.started THEN now() END \
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[]) \
              AS u(bot_id, instance, state, detail, username, started) \
         WHERE EXISTS (SELECT 1 FROM bots WHERE id = u.bot_id) \
         ON CONFLICT (bot_id) DO UPDATE SET \
            instance = EXCLUDED.instance, state = EXCLUDED.state, detail = EXCLUDED.detail, \
            telegram_username = COALESCE(EXCLUDED.telegram_username, \
                                         bot_status.telegram_username), \
            started_at = COALESCE(EXCLUDED.started_at, bot_status.started_at), \
            webhook_url = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.webhook_url END, \
            webhook_pending_update_count = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.webhook_pending_update_count END, \
            webhook_last_error_at = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.webhook_last_error_at END, \
            webhook_last_error = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.webhook_last_error END, \
            webhook_checked_at = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.webhook_checked_at END, \
            updates_per_min = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.updates_per_min END, \
            sent_per_min = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.sent_per_min END, \
            traffic_at = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN NULL \
                ELSE bot_status.traffic_at END, \
            updated_at = now()",
    )
    .bind(ids)
    .bind(instances)
    .bind(states)
    .bind(details)
    .bind(usernames)
    .bind(started)
    .execute(pool)
    .await?;
    Ok(())
}

fn expect_one(
    result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>,
    id: i64,
    name: &str,
) -> Result<(), PanelError> {
    match result {
        Ok(r) if r.rows_affected() == 0 => Err(PanelError::BotNotFound(id)),
        Ok(_) => Ok(()),
        Err(e) => Err(map_unique(e, name)),
    }
}

/// Stores a bot's sealed webhook secret, unless the row's secret is no longer `previous`
/// (another writer, or a token change, came first). Returns whether it was stored.
pub async fn store_webhook_secret(
    pool: &PgPool,
    id: i64,
    previous: Option<&[u8]>,
    sealed: &[u8],
) -> Result<bool, PanelError> {
    let r = sqlx::query(
        "UPDATE bots SET webhook_secret_sealed = $3 \
         WHERE id = $1 AND webhook_secret_sealed IS NOT DISTINCT FROM $2",
    )
    .bind(id)
    .bind(previous)
    .bind(sealed)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// What `getWebhookInfo` said last about a bot's webhook.
#[derive(Debug, Clone)]
pub struct WebhookStatusUpdate<'a> {
    /// The bot.
    pub bot_id: i64,
    /// The URL Telegram has (empty: none).
    pub url: &'a str,
    /// Updates not delivered yet.
    pub pending_update_count: i64,
    /// The latest delivery error and when (Unix time).
    pub last_error: Option<(i64, &'a str)>,
}

/// Writes a bot's traffic figures (per minute) into its status row, if it has one.
/// Notifies nothing.
pub async fn set_traffic(
    pool: &PgPool,
    bot_id: i64,
    updates_per_min: i32,
    sent_per_min: i32,
) -> Result<(), PanelError> {
    sqlx::query(
        "UPDATE bot_status SET updates_per_min = $2, sent_per_min = $3, traffic_at = now() \
         WHERE bot_id = $1",
    )
    .bind(bot_id)
    .bind(updates_per_min)
    .bind(sent_per_min)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes a bot's webhook info into its status row (if it has one). Notifies nothing.
pub async fn set_webhook_status(
    pool: &PgPool,
    w: &WebhookStatusUpdate<'_>,
) -> Result<(), PanelError> {
    sqlx::query(
        "UPDATE bot_status SET webhook_url = $2, webhook_pending_update_count = $3, \
                webhook_last_error_at = to_timestamp($4), webhook_last_error = $5, \
                webhook_checked_at = now() \
         WHERE bot_id = $1",
    )
    .bind(w.bot_id)
    .bind(w.url)
    .bind(w.pending_update_count)
    .bind(w.last_error.map(|(at, _)| at as f64))
    .bind(w.last_error.map(|(_, e)| e))
    .execute(pool)
    .await?;
    Ok(())
}

/// Enables or disables a bot.
pub async fn set_enabled(pool: &PgPool, id: i64, enabled: bool) -> Result<(), PanelError> {
    let r = sqlx::query("UPDATE bots SET enabled = $2 WHERE id = $1")
        .bind(id)
        .bind(enabled)
        .execute(pool)
        .await;
    expect_one(r, id, "")
}

/// Renames a bot (names are unique).
pub async fn rename_bot(pool: &PgPool, id: i64, name: &str) -> Result<(), PanelError> {
    let r = sqlx::query("UPDATE bots SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await;
    expect_one(r, id, name)
}

/// Replaces a bot's token (sealed, with its keyed hash; the clear column emptied).
pub async fn set_token(
    pool: &PgPool,
    keys: &Keyring,
    id: i64,
    token: &BotToken,
) -> Result<(), PanelError> {
    if let Some(holder) = token_holder(pool, keys, token, Some(id)).await? {
        return Err(PanelError::DuplicateToken { holder });
    }
    let key = keys.current();
    let r = sqlx::query(
        "UPDATE bots SET token = NULL, token_sealed = $2, token_hash = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(key.seal(&token_aad(id), token.expose().as_bytes())?)
    .bind(key.token_hash(token.expose()))
    .execute(pool)
    .await;
    expect_one(r, id, "")
}

/// How many rows one transaction of [`seal_clear_tokens`] handles.
pub const SEAL_BATCH: i64 = 100;

/// Seals every token still in clear (rows from an older binary or written by hand) and empties
/// the clear column, one transaction per batch; returns how many were sealed.
pub async fn seal_clear_tokens(pool: &PgPool, keys: &Keyring) -> Result<u64, PanelError> {
    let mut sealed = 0;
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, token FROM bots WHERE token IS NOT NULL ORDER BY id LIMIT $1 FOR UPDATE",
        )
        .bind(SEAL_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(sealed);
        }
        let key = keys.current();
        for (id, token) in &rows {
            sqlx::query(
                "UPDATE bots SET token = NULL, token_sealed = $2, token_hash = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(key.seal(&token_aad(*id), token.trim().as_bytes())?)
            .bind(key.token_hash(token.trim()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        sealed += rows.len() as u64;
    }
}

/// Re-seals up to `limit` bot tokens and up to `limit` secrets not sealed with the current
/// key, in one transaction; returns how many it re-sealed (0: nothing is left under an older
/// key).
pub async fn reseal_batch(pool: &PgPool, keys: &Keyring, limit: i64) -> Result<u64, PanelError> {
    let key = keys.current();
    let current = key.id().0.to_vec();
    let mut tx = pool.begin().await?;
    let bots: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, token_sealed FROM bots \
         WHERE token_sealed IS NOT NULL AND substring(token_sealed FROM 2 FOR 4) <> $1 \
         ORDER BY id LIMIT $2 FOR UPDATE",
    )
    .bind(&current)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    for (id, sealed) in &bots {
        let token = keys.open_string(&token_aad(*id), sealed)?;
        let token = secrecy::ExposeSecret::expose_secret(&token);
        sqlx::query("UPDATE bots SET token_sealed = $2, token_hash = $3 WHERE id = $1")
            .bind(id)
            .bind(key.seal(&token_aad(*id), token.as_bytes())?)
            .bind(key.token_hash(token))
            .execute(&mut *tx)
            .await?;
    }
    let secrets: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT bot_id, name, sealed FROM bot_secrets \
         WHERE substring(sealed FROM 2 FOR 4) <> $1 \
         ORDER BY bot_id, name LIMIT $2 FOR UPDATE",
    )
    .bind(&current)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    for (id, name, sealed) in &secrets {
        let aad = secret_aad(*id, name);
        let value = keys.open(&aad, sealed)?;
        sqlx::query("UPDATE bot_secrets SET sealed = $3 WHERE bot_id = $1 AND name = $2")
            .bind(id)
            .bind(name)
            .bind(key.seal(&aad, &value)?)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((bots.len() + secrets.len()) as u64)
}

/// The ids of every key that sealed a token or secret in the panel.
pub async fn sealing_key_ids(pool: &PgPool) -> Result<Vec<KeyId>, PanelError> {
    let ids: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT DISTINCT substring(token_sealed FROM 2 FOR 4) FROM bots \
         WHERE token_sealed IS NOT NULL \
         UNION SELECT DISTINCT substring(sealed FROM 2 FOR 4) FROM bot_secrets",
    )
    .fetch_all(pool)
    .await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| <[u8; 4]>::try_from(id.as_slice()).ok().map(KeyId))
        .collect())
}

/// How many tokens are still in clear.
pub async fn clear_token_count(pool: &PgPool) -> Result<i64, PanelError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM bots WHERE token IS NOT NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Replaces a bot's manifest.
pub async fn set_manifest(pool: &PgPool, id: i64, manifest: &Manifest) -> Result<(), PanelError> {
    set_manifest_as(pool, id, manifest, "", None).await
}

/// Replaces a bot's manifest; its version is recorded as written by `actor` (empty: the
/// database user, as for any SQL writer).
pub async fn set_manifest_as(
    pool: &PgPool,
    id: i64,
    manifest: &Manifest,
    actor: &str,
    audit: Option<&NewAudit<'_>>,
) -> Result<(), PanelError> {
    let mut tx = begin_as(pool, actor).await?;
    let r = sqlx::query("UPDATE bots SET manifest = $2 WHERE id = $1")
        .bind(id)
        .bind(Json(manifest.to_value()))
        .execute(&mut *tx)
        .await;
    expect_one(r, id, "")?;
    if let Some(entry) = audit {
        insert_audit_on(&mut tx, entry).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A transaction whose writes the version triggers record as `actor` (`botvisor.actor`,
/// migrations/panel/0004); an empty actor leaves the database user.
pub async fn begin_as(
    pool: &PgPool,
    actor: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, PanelError> {
    let mut tx = pool.begin().await?;
    if !actor.is_empty() {
        sqlx::query("SELECT set_config('botvisor.actor', $1, true)")
            .bind(actor)
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Deletes a bot (its texts and status go with it) and returns the deleted row.
pub async fn remove_bot(pool: &PgPool, id: i64) -> Result<BotRecord, PanelError> {
    let bot = get_bot(pool, id).await?;
    let r = sqlx::query("DELETE FROM bots WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await;
    expect_one(r, id, "")?;
    Ok(bot)
}

async fn ensure_bot(pool: &PgPool, id: i64) -> Result<(), PanelError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bots WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(PanelError::BotNotFound(id))
    }
}

fn validated(key: &str, lang: &str, value: &str) -> Result<(), PanelError> {
    crate::content::texts::validate(key, lang, value).map_err(|source| PanelError::Text {
        key: key.to_owned(),
        lang: lang.to_owned(),
        source,
    })
}

/// A foreign-key violation (SQLSTATE 23503) on a bot's row: the bot does not exist (it may
/// have been removed meanwhile).
fn missing_bot(e: sqlx::Error, id: i64) -> PanelError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
            PanelError::BotNotFound(id)
        }
        _ => PanelError::Database(e),
    }
}

/// Sets one text (validated first).
pub async fn set_text(
    pool: &PgPool,
    id: i64,
    key: &str,
    lang: &str,
    value: &str,
) -> Result<(), PanelError> {
    validated(key, lang, value)?;
    import_texts(
        pool,
        id,
        &[(key.to_owned(), lang.to_owned(), value.to_owned())],
    )
    .await
}

/// Deletes one text as `actor` (see [`begin_as`]), recording `audit` in the same transaction
/// when it existed; returns whether it existed.
pub async fn delete_text_as(
    pool: &PgPool,
    id: i64,
    key: &str,
    lang: &str,
    actor: &str,
    audit: Option<&NewAudit<'_>>,
) -> Result<bool, PanelError> {
    ensure_bot(pool, id).await?;
    let mut tx = begin_as(pool, actor).await?;
    let r = sqlx::query("DELETE FROM bot_texts WHERE bot_id = $1 AND key = $2 AND lang = $3")
        .bind(id)
        .bind(key)
        .bind(lang)
        .execute(&mut *tx)
        .await?;
    if let Some(entry) = audit.filter(|_| r.rows_affected() > 0) {
        insert_audit_on(&mut tx, entry).await?;
    }
    tx.commit().await?;
    Ok(r.rows_affected() > 0)
}

/// Sets many texts in one transaction (one reload notification); all are validated first and
/// nothing is written if any is invalid.
pub async fn import_texts(
    pool: &PgPool,
    id: i64,
    texts: &[(String, String, String)],
) -> Result<(), PanelError> {
    import_texts_as(pool, id, texts, "", None).await
}

/// [`import_texts`], the versions recorded as written by `actor` (see [`begin_as`]).
pub async fn import_texts_as(
    pool: &PgPool,
    id: i64,
    texts: &[(String, String, String)],
    actor: &str,
    audit: Option<&NewAudit<'_>>,
) -> Result<(), PanelError> {
    for (key, lang, value) in texts {
        validated(key, lang, value)?;
    }
    ensure_bot(pool, id).await?;
    let mut tx = begin_as(pool, actor).await?;
    for (key, lang, value) in texts {
        sqlx::query(
            "INSERT INTO bot_texts (bot_id, key, lang, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bot_id, key, lang) DO UPDATE SET value = EXCLUDED.value \
             WHERE bot_texts.value IS DISTINCT FROM EXCLUDED.value",
        )
        .bind(id)
        .bind(key)
        .bind(lang)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(|e| missing_bot(e, id))?;
    }
    if let Some(entry) = audit {
        insert_audit_on(&mut tx, entry).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One text, if set.
pub async fn get_text(
    pool: &PgPool,
    id: i64,
    key: &str,
    lang: &str,
) -> Result<Option<TextRecord>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT key, lang, value, updated_at FROM bot_texts \
         WHERE bot_id = $1 AND key = $2 AND lang = $3",
    )
    .bind(id)
    .bind(key)
    .bind(lang)
    .fetch_optional(pool)
    .await?)
}

/// Every text of a bot, ordered by key and language.
pub async fn list_texts(pool: &PgPool, id: i64) -> Result<Vec<TextRecord>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT key, lang, value, updated_at FROM bot_texts \
         WHERE bot_id = $1 ORDER BY key, lang",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// The texts and sealed secrets of several bots in two statements (a pass that starts many
/// bots at once: the cold start); a bot with neither is absent from the map.
pub async fn list_contents(
    pool: &PgPool,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, (Vec<TextRecord>, Vec<SecretRecord>)>, PanelError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        bot_id: i64,
        #[sqlx(flatten)]
        text: TextRecord,
    }
    let mut out: std::collections::HashMap<i64, (Vec<TextRecord>, Vec<SecretRecord>)> =
        std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let texts: Vec<Row> = sqlx::query_as(
        "SELECT bot_id, key, lang, value, updated_at FROM bot_texts \
         WHERE bot_id = ANY($1) ORDER BY bot_id, key, lang",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    for row in texts {
        out.entry(row.bot_id).or_default().0.push(row.text);
    }
    let secrets: Vec<SecretRecord> = sqlx::query_as(
        "SELECT bot_id, name, sealed, updated_at FROM bot_secrets \
         WHERE bot_id = ANY($1) ORDER BY bot_id, name",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    for secret in secrets {
        out.entry(secret.bot_id).or_default().1.push(secret);
    }
    Ok(out)
}

/// Deletes one text; returns whether it existed.
pub async fn delete_text(
    pool: &PgPool,
    id: i64,
    key: &str,
    lang: &str,
) -> Result<bool, PanelError> {
    delete_text_as(pool, id, key, lang, "", None).await
}

/// Stores a bot's sealed secret `name` (replacing it); the trigger notifies `reload_config`.
pub async fn set_secret(
    pool: &PgPool,
    id: i64,
    name: &str,
    sealed: &[u8],
) -> Result<(), PanelError> {
    sqlx::query(
        "INSERT INTO bot_secrets (bot_id, name, sealed) VALUES ($1, $2, $3) \
         ON CONFLICT (bot_id, name) DO UPDATE SET sealed = EXCLUDED.sealed",
    )
    .bind(id)
    .bind(name)
    .bind(sealed)
    .execute(pool)
    .await
    .map_err(|e| missing_bot(e, id))?;
    Ok(())
}

/// Every sealed secret of a bot, by name.
pub async fn list_secrets(pool: &PgPool, id: i64) -> Result<Vec<SecretRecord>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT bot_id, name, sealed, updated_at FROM bot_secrets \
         WHERE bot_id = $1 ORDER BY name",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Deletes a bot's secret; returns whether it existed.
pub async fn delete_secret(pool: &PgPool, id: i64, name: &str) -> Result<bool, PanelError> {
    ensure_bot(pool, id).await?;
    let r = sqlx::query("DELETE FROM bot_secrets WHERE bot_id = $1 AND name = $2")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Sends `NOTIFY reload_config` for one bot, or for every bot with an empty payload.
pub async fn notify_reload(pool: &PgPool, id: Option<i64>) -> Result<(), PanelError> {
    if let Some(id) = id {
        ensure_bot(pool, id).await?;
    }
    let payload = id.map(|i| i.to_string()).unwrap_or_default();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::RELOAD_CONFIG)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// Asks the daemon running bot `id` to wake its module `module`'s job (`NOTIFY bot_wake`).
pub async fn notify_wake(pool: &PgPool, id: i64, module: &str) -> Result<(), PanelError> {
    ensure_bot(pool, id).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::BOT_WAKE)
        .bind(format!("{id}:{module}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// The high 32 bits of every bot-ownership advisory lock key: `bvow`. The low 32 bits are the
/// bot id, so the key space is distinct from sqlx's migration locks and anyone else's.
pub const OWNERSHIP_SPACE: i64 = 0x6276_6f77;

/// The largest bot id an ownership lock can name (the key's low 32 bits).
pub const MAX_OWNED_ID: i64 = u32::MAX as i64;

/// Who this daemon instance is, for `instances`.
#[derive(Debug, Clone)]
pub struct InstanceBeat<'a> {
    /// The instance's name.
    pub name: &'a str,
    /// Its process id.
    pub pid: i32,
    /// Its host.
    pub host: &'a str,
}

/// The instance columns, with `live` computed from `pg_stat_activity`.
const SELECT_INSTANCES: &str = "\
    SELECT i.name, i.started_at, i.heartbeat_at, i.pid, i.host, i.control_pid, i.bots_owned, \
           (a.pid IS NOT NULL) AS live \
    FROM instances i \
    LEFT JOIN pg_stat_activity a \
           ON a.pid = i.control_pid AND a.backend_start = i.control_started_at";

/// The control session's identity: its backend pid.
pub async fn control_backend(conn: &mut sqlx::PgConnection) -> Result<i32, PanelError> {
    Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?)
}

/// Registers (or refreshes) this instance with its control session `conn` and the number of
/// bots it owns. Returns another live instance that already uses this name, if any: then
/// nothing is written (two processes must not share a name).
pub async fn beat_instance(
    conn: &mut sqlx::PgConnection,
    me: &InstanceBeat<'_>,
    bots_owned: i32,
) -> Result<Option<InstanceRecord>, PanelError> {
    let clash: Option<InstanceRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_INSTANCES} WHERE i.name = $1 AND a.pid IS NOT NULL AND a.pid <> pg_backend_pid()"
    )))
    .bind(me.name)
    .fetch_optional(&mut *conn)
    .await?;
    if clash.is_some() {
        return Ok(clash);
    }
    sqlx::query(
        "INSERT INTO instances (name, pid, host, control_pid, control_started_at, bots_owned) \
         SELECT $1, $2, $3, pid, backend_start, $4 FROM pg_stat_activity \
         WHERE pid = pg_backend_pid() \
         ON CONFLICT (name) DO UPDATE SET \
            heartbeat_at = clock_timestamp(), pid = EXCLUDED.pid, host = EXCLUDED.host, \
            control_pid = EXCLUDED.control_pid, \
            control_started_at = EXCLUDED.control_started_at, \
            bots_owned = EXCLUDED.bots_owned, \
            started_at = CASE WHEN instances.pid = EXCLUDED.pid \
                               AND instances.host = EXCLUDED.host \
                              THEN instances.started_at ELSE clock_timestamp() END",
    )
    .bind(me.name)
    .bind(me.pid)
    .bind(me.host)
    .bind(bots_owned)
    .execute(&mut *conn)
    .await?;
    Ok(None)
}

/// What an instance needs to decide its share: the live instances, the enabled bots, who
/// holds which bot's lock, and the bots that may still run elsewhere.
#[derive(Debug, Clone, Default)]
pub struct OwnershipView {
    /// Live instances (open control session): (name, control pid).
    pub instances: Vec<(String, i32)>,
    /// Enabled bots' ids.
    pub bots: Vec<i64>,
    /// Bot id → backend pid holding its ownership lock.
    pub holders: Vec<(i64, i32)>,
    /// Bots whose latest status says another instance runs them, with that instance's
    /// heartbeat age in seconds, its pid and host (see `control::ownership`).
    pub running_elsewhere: Vec<RunningElsewhere>,
}

/// A bot whose `bot_status` row says another instance is (or was lately) running it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningElsewhere {
    /// The bot.
    pub bot_id: i64,
    /// The instance named in its status row.
    pub instance: String,
    /// Seconds since that instance's latest heartbeat.
    pub heartbeat_age: f64,
    /// That instance's process id.
    pub pid: i32,
    /// That instance's host.
    pub host: String,
}

/// Reads the [`OwnershipView`] on the control session (four small queries).
pub async fn ownership_view(
    conn: &mut sqlx::PgConnection,
    me: &str,
) -> Result<OwnershipView, PanelError> {
    let instances: Vec<(String, i32)> = sqlx::query_as(
        "SELECT i.name, i.control_pid FROM instances i \
         JOIN pg_stat_activity a \
           ON a.pid = i.control_pid AND a.backend_start = i.control_started_at \
         ORDER BY i.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let bots: Vec<i64> = sqlx::query_scalar("SELECT id FROM bots WHERE enabled ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    let holders: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT l.objid::bigint, l.pid FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.classid::bigint = $1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(OWNERSHIP_SPACE)
    .fetch_all(&mut *conn)
    .await?;
    let running_elsewhere: Vec<RunningElsewhere> = sqlx::query_as(
        "SELECT s.bot_id, s.instance, \
                EXTRACT(EPOCH FROM clock_timestamp() - i.heartbeat_at)::float8 AS heartbeat_age, \
                i.pid, i.host \
         FROM bot_status s JOIN instances i ON i.name = s.instance \
         WHERE s.instance <> $1 AND s.state NOT IN ('stopped', 'failed', 'auth_failed')",
    )
    .bind(me)
    .fetch_all(&mut *conn)
    .await?;
    Ok(OwnershipView {
        instances,
        bots,
        holders,
        running_elsewhere,
    })
}

/// PostgreSQL's SQLSTATE `out_of_memory` ("out of shared memory"): raised by a lock request
/// when the server's lock table is full.
const LOCK_TABLE_FULL: &str = "53200";

/// What [`try_lock_bots`] took.
#[derive(Debug, Default)]
pub struct Locked {
    /// The ids whose locks the control session now holds.
    pub taken: Vec<i64>,
    /// The server's lock table had no room for every id: the ids not in `taken` hold no lock
    /// of ours.
    pub table_full: bool,
}

/// Tries to take the ownership locks of `ids` on the control session; never waits for a lock
/// another session holds, and never fills the server's lock table. That table is shared by
/// every session of the server, and when it is full the server refuses new connections
/// (`FATAL: out of shared memory`). So at most as many ids are tried as `table` has room for
/// by its documented size (PostgreSQL fits about twice that), lowest ids first; and should the
/// statement fail on a full table anyway (other sessions filled it), the locks it took before
/// the error — held, since session locks ignore the rollback — are given back.
pub async fn try_lock_bots(
    conn: &mut sqlx::PgConnection,
    ids: &[i64],
    table: LockTable,
) -> Result<Locked, PanelError> {
    if ids.is_empty() {
        return Ok(Locked::default());
    }
    let used: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT fastpath")
        .fetch_one(&mut *conn)
        .await?;
    let room = usize::try_from(table.size() - used).unwrap_or(0);
    let tried = &ids[..ids.len().min(room)];
    let short = tried.len() < ids.len();
    if tried.is_empty() {
        return Ok(Locked {
            taken: Vec::new(),
            table_full: short,
        });
    }
    let r: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
        "SELECT id FROM unnest($1::bigint[]) AS id \
         WHERE pg_try_advisory_lock(($2::bigint << 32) | id)",
    )
    .bind(tried)
    .bind(OWNERSHIP_SPACE)
    .fetch_all(&mut *conn)
    .await;
    match r {
        Ok(taken) => Ok(Locked {
            taken,
            table_full: short,
        }),
        Err(e)
            if e.as_database_error().and_then(|d| d.code()).as_deref() == Some(LOCK_TABLE_FULL) =>
        {
            sqlx::query(
                "SELECT pg_advisory_unlock(($2::bigint << 32) | l.objid::bigint) \
                 FROM pg_locks l \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.pid = pg_backend_pid() AND l.classid::bigint = $2 \
                   AND l.objid::bigint = ANY($1)",
            )
            .bind(tried)
            .bind(OWNERSHIP_SPACE)
            .execute(&mut *conn)
            .await?;
            Ok(Locked {
                taken: Vec::new(),
                table_full: true,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The size of the server's lock table, as PostgreSQL sizes it: `max_locks_per_transaction`
/// × (`max_connections` + `max_prepared_transactions`) entries shared by every session (the
/// server finds some more room in its spare shared memory, about as much again, but that room
/// is shared with everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTable {
    /// `max_locks_per_transaction`.
    pub per_transaction: i64,
    /// `max_connections` + `max_prepared_transactions`.
    pub slots: i64,
}

impl LockTable {
    /// Entries the table is sized for.
    pub fn size(&self) -> i64 {
        self.per_transaction * self.slots
    }

    /// The `max_locks_per_transaction` that sizes the table for `bots` ownership locks at
    /// half of it (the other half for every other lock of the server), rounded up to 64.
    pub fn per_transaction_for(&self, bots: i64) -> i64 {
        let (bots, slots) = (bots.max(0).unsigned_abs(), self.slots.max(1).unsigned_abs());
        let need = (2 * bots).div_ceil(slots).div_ceil(64).max(1) * 64;
        i64::try_from(need).unwrap_or(i64::MAX)
    }
}

/// Reads the settings that size the server's lock table.
pub async fn lock_table(conn: &mut sqlx::PgConnection) -> Result<LockTable, PanelError> {
    let (per_transaction, slots): (i64, i64) = sqlx::query_as(
        "SELECT current_setting('max_locks_per_transaction')::bigint, \
                current_setting('max_connections')::bigint \
                  + current_setting('max_prepared_transactions')::bigint",
    )
    .fetch_one(conn)
    .await?;
    Ok(LockTable {
        per_transaction,
        slots,
    })
}

/// Releases the ownership locks of `ids` held by the control session.
pub async fn unlock_bots(conn: &mut sqlx::PgConnection, ids: &[i64]) -> Result<(), PanelError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_unlock(($2::bigint << 32) | id) FROM unnest($1::bigint[]) AS id",
    )
    .bind(ids)
    .bind(OWNERSHIP_SPACE)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes this instance's row (a clean stop).
pub async fn release_instance(pool: &PgPool, me: &InstanceBeat<'_>) -> Result<(), PanelError> {
    sqlx::query("DELETE FROM instances WHERE name = $1 AND pid = $2 AND host = $3")
        .bind(me.name)
        .bind(me.pid)
        .bind(me.host)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every instance row, the freshest heartbeat first, with whether it is live.
pub async fn list_instances(pool: &PgPool) -> Result<Vec<InstanceRecord>, PanelError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_INSTANCES} ORDER BY i.heartbeat_at DESC"
    )))
    .fetch_all(pool)
    .await?)
}

// ---- Operators, sessions, API keys, audit log, versions (migrations/panel/0004) ----

const SELECT_OPERATORS: &str =
    "SELECT id, login, role, bots, password_hash, created_at, updated_at FROM operators";

/// Adds an operator; returns its id. A taken login is [`PanelError::DuplicateLogin`].
pub async fn add_operator(
    pool: &PgPool,
    login: &str,
    role: &str,
    bots: &[i64],
    password_hash: &str,
) -> Result<i64, PanelError> {
    sqlx::query_scalar(
        "INSERT INTO operators (login, role, bots, password_hash) VALUES ($1, $2, $3, $4) \
         RETURNING id",
    )
    .bind(login)
    .bind(role)
    .bind(bots)
    .bind(password_hash)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PanelError::DuplicateLogin(login.to_owned())
        }
        _ => PanelError::Database(e),
    })
}

/// Every operator, by login.
pub async fn list_operators(pool: &PgPool) -> Result<Vec<OperatorRecord>, PanelError> {
    let sql = format!("{SELECT_OPERATORS} ORDER BY login");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?)
}

/// One operator by login.
pub async fn get_operator(pool: &PgPool, login: &str) -> Result<OperatorRecord, PanelError> {
    let sql = format!("{SELECT_OPERATORS} WHERE login = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(login)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| PanelError::OperatorNotFound(login.to_owned()))
}

/// How many operators have `role`.
pub async fn count_operators_with_role(pool: &PgPool, role: &str) -> Result<i64, PanelError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM operators WHERE role = $1")
            .bind(role)
            .fetch_one(pool)
            .await?,
    )
}

/// Removes an operator (its sessions and keys go with it).
pub async fn remove_operator(pool: &PgPool, login: &str) -> Result<(), PanelError> {
    let r = sqlx::query("DELETE FROM operators WHERE login = $1")
        .bind(login)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(PanelError::OperatorNotFound(login.to_owned()));
    }
    Ok(())
}

/// Replaces an operator's password hash and ends its sessions.
pub async fn set_operator_password(
    pool: &PgPool,
    login: &str,
    password_hash: &str,
) -> Result<(), PanelError> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE operators SET password_hash = $2, updated_at = now() WHERE login = $1 \
         RETURNING id",
    )
    .bind(login)
    .bind(password_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(PanelError::OperatorNotFound(login.to_owned()));
    };
    sqlx::query("DELETE FROM operator_sessions WHERE operator_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a new API key's hash for an operator.
pub async fn add_api_key(
    pool: &PgPool,
    operator_id: i64,
    key_hash: &str,
    prefix: &str,
) -> Result<(), PanelError> {
    sqlx::query(
        "INSERT INTO operator_api_keys (operator_id, key_hash, prefix) VALUES ($1, $2, $3)",
    )
    .bind(operator_id)
    .bind(key_hash)
    .bind(prefix)
    .execute(pool)
    .await?;
    Ok(())
}

/// The operator holding the API key with this hash (and marks the key used).
pub async fn operator_by_api_key(
    pool: &PgPool,
    key_hash: &str,
) -> Result<Option<OperatorRecord>, PanelError> {
    Ok(sqlx::query_as(
        "WITH k AS (UPDATE operator_api_keys SET last_used_at = now() WHERE key_hash = $1 \
                    RETURNING operator_id) \
         SELECT o.id, o.login, o.role, o.bots, o.password_hash, o.created_at, o.updated_at \
         FROM operators o JOIN k ON k.operator_id = o.id",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await?)
}

/// Opens a session (and deletes expired ones).
pub async fn create_session(
    pool: &PgPool,
    token_hash: &str,
    operator_id: i64,
    csrf: &str,
    lifetime_secs: i64,
) -> Result<(), PanelError> {
    sqlx::query("DELETE FROM operator_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO operator_sessions (token_hash, operator_id, csrf, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(token_hash)
    .bind(operator_id)
    .bind(csrf)
    .bind(lifetime_secs as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The live session with this hash, if any.
pub async fn session(pool: &PgPool, token_hash: &str) -> Result<Option<SessionRecord>, PanelError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        operator: OperatorRecord,
        csrf: String,
        expires_at: chrono::DateTime<chrono::Utc>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT o.id, o.login, o.role, o.bots, o.password_hash, o.created_at, o.updated_at, \
                s.csrf, s.expires_at \
         FROM operator_sessions s JOIN operators o ON o.id = s.operator_id \
         WHERE s.token_hash = $1 AND s.expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| SessionRecord {
        operator: r.operator,
        csrf: r.csrf,
        expires_at: r.expires_at,
    }))
}

/// Ends a session.
pub async fn delete_session(pool: &PgPool, token_hash: &str) -> Result<(), PanelError> {
    sqlx::query("DELETE FROM operator_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Appends an entry to the audit log.
pub async fn insert_audit(pool: &PgPool, entry: &NewAudit<'_>) -> Result<(), PanelError> {
    let mut conn = pool.acquire().await?;
    insert_audit_on(&mut conn, entry).await
}

/// Appends `entry` to the audit log on `conn` — inside the transaction of the change it
/// records, so the change and its entry commit (or roll back) together.
pub async fn insert_audit_on(
    conn: &mut PgConnection,
    entry: &NewAudit<'_>,
) -> Result<(), PanelError> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, bot_id, target, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.bot_id)
    .bind(entry.target)
    .bind(entry.before.clone().map(Json))
    .bind(entry.after.clone().map(Json))
    .execute(conn)
    .await?;
    Ok(())
}

/// Enables or disables a bot and records `audit` in the same transaction (written as its
/// actor).
pub async fn set_enabled_audited(
    pool: &PgPool,
    id: i64,
    enabled: bool,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let change = sqlx::query("UPDATE bots SET enabled = $2 WHERE id = $1")
        .bind(id)
        .bind(enabled);
    change_bot_audited(pool, id, "", change, audit).await
}

/// Renames a bot and records `audit` in the same transaction.
pub async fn rename_bot_audited(
    pool: &PgPool,
    id: i64,
    name: &str,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let change = sqlx::query("UPDATE bots SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(name);
    change_bot_audited(pool, id, name, change, audit).await
}

/// Replaces a bot's token (sealed) and records `audit` in the same transaction.
pub async fn set_token_audited(
    pool: &PgPool,
    keys: &Keyring,
    id: i64,
    token: &BotToken,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    if let Some(holder) = token_holder(pool, keys, token, Some(id)).await? {
        return Err(PanelError::DuplicateToken { holder });
    }
    let key = keys.current();
    let change = sqlx::query(
        "UPDATE bots SET token = NULL, token_sealed = $2, token_hash = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(key.seal(&token_aad(id), token.expose().as_bytes())?)
    .bind(key.token_hash(token.expose()));
    change_bot_audited(pool, id, "", change, audit).await
}

/// Deletes a bot (its texts and status go with it) and records `audit` in the same
/// transaction.
pub async fn remove_bot_audited(
    pool: &PgPool,
    id: i64,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let change = sqlx::query("DELETE FROM bots WHERE id = $1").bind(id);
    change_bot_audited(pool, id, "", change, audit).await
}

/// Runs `change` — one statement on bot `id`'s row — and records `audit` in the same
/// transaction, written as the audit's actor (so version triggers name it too). `name` is
/// the name a unique violation refers to.
async fn change_bot_audited(
    pool: &PgPool,
    id: i64,
    name: &str,
    change: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    audit: &NewAudit<'_>,
) -> Result<(), PanelError> {
    let mut tx = begin_as(pool, audit.actor).await?;
    let r = change.execute(&mut *tx).await;
    expect_one(r, id, name)?;
    insert_audit_on(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(())
}

/// The latest `limit` audit entries older than `before_id` (all when `None`), newest first.
pub async fn list_audit(
    pool: &PgPool,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<AuditRecord>, PanelError> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, action, bot_id, target, before, after FROM audit_log \
         WHERE $2::bigint IS NULL OR id < $2 ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(before_id)
    .fetch_all(pool)
    .await?)
}

/// Every version of one text, newest first.
pub async fn text_history(
    pool: &PgPool,
    id: i64,
    key: &str,
    lang: &str,
) -> Result<Vec<TextVersion>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT version, key, lang, previous, value, actor, at FROM text_versions \
         WHERE bot_id = $1 AND key = $2 AND lang = $3 ORDER BY version DESC",
    )
    .bind(id)
    .bind(key)
    .bind(lang)
    .fetch_all(pool)
    .await?)
}

/// The latest `limit` text changes of a bot, any key, newest first.
pub async fn recent_text_versions(
    pool: &PgPool,
    id: i64,
    limit: i64,
) -> Result<Vec<TextVersion>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT version, key, lang, previous, value, actor, at FROM text_versions \
         WHERE bot_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Every version of a bot's manifest, newest first.
pub async fn manifest_history(pool: &PgPool, id: i64) -> Result<Vec<ManifestVersion>, PanelError> {
    ensure_bot(pool, id).await?;
    Ok(sqlx::query_as(
        "SELECT version, previous, manifest, actor, at FROM manifest_versions \
         WHERE bot_id = $1 ORDER BY version DESC",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// The longest time, in seconds, any of `keys` must still wait: a key waits when it has at
/// least its maximum of failures within the last `window_secs` (none waits: `None`).
pub async fn login_wait(
    pool: &PgPool,
    keys: &[(String, i32)],
    window_secs: f64,
) -> Result<Option<f64>, PanelError> {
    let (names, maxima): (Vec<&str>, Vec<i32>) = keys.iter().map(|(k, m)| (k.as_str(), *m)).unzip();
    Ok(sqlx::query_scalar(
        "SELECT max(extract(epoch FROM f.since + make_interval(secs => $3) - now()))::float8 \
         FROM login_failures f JOIN unnest($1::text[], $2::int[]) AS k(key, max) USING (key) \
         WHERE f.failures >= k.max AND f.since > now() - make_interval(secs => $3)",
    )
    .bind(names)
    .bind(maxima)
    .bind(window_secs)
    .fetch_one(pool)
    .await?)
}

/// Counts one failed sign-in for each of `keys`; a key whose window passed starts again.
pub async fn login_failed(
    pool: &PgPool,
    keys: &[String],
    window_secs: f64,
) -> Result<(), PanelError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM login_failures WHERE since <= now() - make_interval(secs => $1)")
        .bind(window_secs)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO login_failures (key, failures) SELECT unnest($1::text[]), 1 \
         ON CONFLICT (key) DO UPDATE SET failures = login_failures.failures + 1",
    )
    .bind(keys)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Forgets the failures of `key` (a login that signed in).
pub async fn login_forget(pool: &PgPool, key: &str) -> Result<(), PanelError> {
    sqlx::query("DELETE FROM login_failures WHERE key = $1")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}
