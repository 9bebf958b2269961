//! D1 access: the engine's SQL ([`fluxy_room::sql`]) bound and run through D1, plus row decoding.

use std::cell::RefCell;
use std::collections::HashMap;

use fluxy_room::sql::{SqlValue, Stmt};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, D1Result, Env};

use crate::config::config;
use crate::error::{ApiError, ApiResult};

/// One result row, keyed by column name.
pub type Row = Map<String, Value>;

/// Seed a tenant, replacing the secret (the configured secret is the truth in dev).
const UPSERT_TENANT: &str = "INSERT INTO tenants (id, name, jwt_secret, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET jwt_secret = excluded.jwt_secret";
/// Seed an API key hash (idempotent).
const SEED_API_KEY: &str =
    "INSERT OR IGNORE INTO api_keys (key_hash, tenant_id, created_at) VALUES (?1, ?2, ?3)";

/// The D1 binding `DB`.
pub fn database(env: &Env) -> ApiResult<D1Database> {
    env.d1("DB")
        .map_err(|e| ApiError::internal("D1 binding DB", e))
}

/// A parameter as a JS value (integers stay below 2^53 in practice: seqs and epoch ms).
pub fn js_value(v: &SqlValue) -> JsValue {
    match v {
        SqlValue::Null => JsValue::NULL,
        SqlValue::Int(i) => JsValue::from_f64(*i as f64),
        SqlValue::Text(s) => JsValue::from_str(s),
    }
}

/// Prepare `sql` with `params`.
pub fn prepare(db: &D1Database, sql: &str, params: &[SqlValue]) -> ApiResult<D1PreparedStatement> {
    let values: Vec<JsValue> = params.iter().map(js_value).collect();
    Ok(db.prepare(sql).bind(&values)?)
}

/// Prepare an engine statement.
pub fn prepare_stmt(db: &D1Database, s: &Stmt) -> ApiResult<D1PreparedStatement> {
    prepare(db, s.sql, &s.params)
}

/// Run statements in one D1 `batch()` (one round trip, one transaction).
pub async fn batch(db: &D1Database, stmts: Vec<D1PreparedStatement>) -> ApiResult<Vec<D1Result>> {
    Ok(db.batch(stmts).await?)
}

/// The rows of one result.
pub fn rows(r: &D1Result) -> ApiResult<Vec<Row>> {
    Ok(r.results::<Row>()?)
}

/// The first row of one result.
pub fn first(r: &D1Result) -> ApiResult<Option<Row>> {
    Ok(rows(r)?.into_iter().next())
}

/// A text column.
pub fn text(row: &Row, col: &str) -> Option<String> {
    row.get(col).and_then(Value::as_str).map(str::to_owned)
}

/// An integer column (D1 returns JS numbers).
pub fn int(row: &Row, col: &str) -> Option<u64> {
    let v = row.get(col)?;
    v.as_u64()
        .or_else(|| v.as_i64().map(|i| u64::try_from(i).unwrap_or(0)))
        .or_else(|| v.as_f64().map(|f| if f > 0.0 { f as u64 } else { 0 }))
}

/// The only column of a single-column row (for expressions such as `COALESCE(MAX(seq), 0)`).
pub fn only(row: &Row) -> Option<&Value> {
    row.values().next()
}

/// SHA-256 hex digest of an API key (how keys are stored) `[FX-AUTH-12]`.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// `n` random bytes from `crypto.getRandomValues`.
pub fn random_bytes(n: usize) -> ApiResult<Vec<u8>> {
    let arr = js_sys::Uint8Array::new_with_length(n as u32);
    let crypto = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("crypto"))
        .map_err(|_| ApiError::internal("crypto", "no global crypto"))?;
    let f = js_sys::Reflect::get(&crypto, &JsValue::from_str("getRandomValues"))
        .map_err(|_| ApiError::internal("crypto", "no getRandomValues"))?;
    let f: js_sys::Function = f
        .dyn_into_function()
        .ok_or_else(|| ApiError::internal("crypto", "getRandomValues is not a function"))?;
    f.call1(&crypto, &arr)
        .map_err(|_| ApiError::internal("crypto", "getRandomValues threw"))?;
    Ok(arr.to_vec())
}

trait DynFn {
    fn dyn_into_function(self) -> Option<js_sys::Function>;
}
impl DynFn for JsValue {
    fn dyn_into_function(self) -> Option<js_sys::Function> {
        use wasm_bindgen::JsCast;
        self.dyn_into::<js_sys::Function>().ok()
    }
}

/// Per-isolate caches: seeded flag, cursor key, tenant secrets.
#[derive(Default)]
struct Cache {
    cursor_key: Option<Vec<u8>>,
    secrets: HashMap<String, Vec<u8>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Seed the configured tenants and the cursor key (first call in an isolate: one batch), and
/// return the cursor key (from `server_meta`, shared with every isolate and the native shell's
/// schema).
pub async fn bootstrap(env: &Env, db: &D1Database) -> ApiResult<Vec<u8>> {
    if let Some(k) = CACHE.with(|c| c.borrow().cursor_key.clone()) {
        return Ok(k);
    }
    let cfg = config(env);
    let now = SqlValue::from(now_ms());
    let mut stmts = Vec::new();
    for t in &cfg.tenants {
        stmts.push(prepare(
            db,
            UPSERT_TENANT,
            &[
                t.id.as_str().into(),
                t.id.as_str().into(),
                t.jwt_secret.as_str().into(),
                now.clone(),
            ],
        )?);
        stmts.push(prepare(
            db,
            SEED_API_KEY,
            &[
                hash_api_key(&t.api_key).as_str().into(),
                t.id.as_str().into(),
                now.clone(),
            ],
        )?);
    }
    let fresh = hex::encode(random_bytes(32)?);
    stmts.push(prepare(
        db,
        fluxy_room::sql::INSERT_META,
        &["cursor_key".into(), fresh.as_str().into()],
    )?);
    stmts.push(prepare(
        db,
        fluxy_room::sql::GET_META,
        &["cursor_key".into()],
    )?);
    let res = batch(db, stmts).await?;
    let key = res
        .last()
        .map(first)
        .transpose()?
        .flatten()
        .and_then(|r| text(&r, "value"))
        .ok_or_else(|| ApiError::internal("bootstrap", "no cursor key"))?
        .into_bytes();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.cursor_key = Some(key.clone());
        for t in &cfg.tenants {
            c.secrets
                .insert(t.id.clone(), t.jwt_secret.clone().into_bytes());
        }
    });
    Ok(key)
}

/// The JWT secret of a tenant (cached per isolate).
pub async fn tenant_secret(db: &D1Database, tenant: &str) -> ApiResult<Option<Vec<u8>>> {
    if let Some(s) = CACHE.with(|c| c.borrow().secrets.get(tenant).cloned()) {
        return Ok(Some(s));
    }
    let r = prepare(db, fluxy_room::sql::TENANT_SECRET, &[tenant.into()])?
        .all()
        .await?;
    let s = first(&r)?.and_then(|row| text(&row, "jwt_secret"));
    if let Some(s) = &s {
        CACHE.with(|c| {
            c.borrow_mut()
                .secrets
                .insert(tenant.to_owned(), s.clone().into_bytes())
        });
    }
    Ok(s.map(String::into_bytes))
}
