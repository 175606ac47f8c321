//! Vault or OpenBao (DESIGN.md's `vault.rs`): the app's KV secrets at `<kv_mount>/<team>/<service>`,
//! and dynamic database credentials from the database secrets engine, one role per stand, leased,
//! renewed and revoked.
//!
//! vaultrs does the requests; the few it lacks (the lease of dynamic credentials, which its helper
//! drops, and `sys/leases/*`) are rustify endpoints on vaultrs's own client, so every call shares
//! one HTTP client, token and error mapping.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustify::endpoint::Endpoint;
use rustify_derive::Endpoint;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use vaultrs::api::EndpointResult;
use vaultrs::api::database::requests::{PostgreSQLConnectionRequest, SetRoleRequest};
use vaultrs::api::database::responses::GenerateCredentialsResponse;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::config::{VaultAuth, VaultConfig};
use crate::stand::Failure;
use crate::text::quote_ident;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no secret at {path} in Vault: create it (KV v2), or unset the project's team/service")]
    KvMissing { path: String },
    #[error("Vault is unreachable or unavailable ({0}); will try again")]
    Unavailable(String),
    #[error("Vault refused {what}: permission denied (check draftd's policy; see deploy/vault-policy.hcl)")]
    Denied { what: String },
    #[error("Vault answered {code} to {what}: {errors}")]
    Api { what: String, code: u16, errors: String },
    #[error("Vault login failed: {0}")]
    Login(String),
    #[error("Vault configuration: {0}")]
    Config(String),
}

impl Failure for VaultError {
    fn is_transient(&self) -> bool {
        match self {
            VaultError::Unavailable(_) => true,
            VaultError::Api { code, .. } => *code >= 500 || *code == 429,
            _ => false,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            VaultError::KvMissing { .. } => "vault_kv_missing",
            VaultError::Unavailable(_) => "vault_unavailable",
            VaultError::Denied { .. } => "vault_denied",
            VaultError::Api { .. } => "vault_api",
            VaultError::Login(_) => "vault_login",
            VaultError::Config(_) => "vault_config",
        }
    }
}

/// A dynamic credential and its lease. The password goes only into the stand's Secret.
#[derive(Clone)]
pub struct LeasedLogin {
    pub lease_id: String,
    pub username: String,
    pub password: SecretString,
    pub lease_duration: Duration,
}

impl std::fmt::Debug for LeasedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedLogin")
            .field("lease_id", &self.lease_id)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("lease_duration", &self.lease_duration)
            .finish()
    }
}

/// The stand database server as Vault's database engine reaches it (admin login included).
#[derive(Clone)]
pub struct DbServer {
    /// `host:port` as Vault sees it.
    pub host: String,
    /// The database Vault's connection opens (any database the admin may use; roles are global).
    pub database: String,
    pub username: String,
    pub password: SecretString,
    /// Query of the admin URL (`sslmode=…`), kept as given.
    pub query: Option<String>,
}

/// One stand's role in the database engine: its logins join `owner`, and live `ttl` at first,
/// `max_ttl` at most however often they are renewed.
#[derive(Debug, Clone)]
pub struct DbRole {
    pub name: String,
    pub owner: String,
    pub ttl: Duration,
    pub max_ttl: Duration,
}

/// Whose a role under the database mount is, by the connection (`db_name`) it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleConnection {
    /// It uses draftd's connection (`[vault] database_connection`): draftd wrote it.
    Ours,
    /// It uses another connection: another installation's, or not draftd's at all.
    Other,
    /// No such role.
    Absent,
}

/// Vault as the pipeline uses it.
pub trait Vault: Send + Sync + 'static {
    /// The KV v2 secret at `<kv_mount>/<path>`, every value as a string (non-strings as JSON).
    fn read_kv(&self, path: &str) -> impl Future<Output = Result<BTreeMap<String, SecretString>, VaultError>> + Send;

    /// Configures the engine's connection to the stand database server (idempotent).
    fn ensure_connection(&self, server: &DbServer) -> impl Future<Output = Result<(), VaultError>> + Send;

    /// Creates or updates the stand's role (idempotent).
    fn ensure_role(&self, role: &DbRole) -> impl Future<Output = Result<(), VaultError>> + Send;

    /// Deletes the role; its leases must be revoked first. Absent is fine.
    fn delete_role(&self, role: &str) -> impl Future<Output = Result<(), VaultError>> + Send;

    /// New credentials from the stand's role.
    fn issue(&self, role: &str) -> impl Future<Output = Result<LeasedLogin, VaultError>> + Send;

    /// Extends the lease by `increment`, capped by the role's max TTL; returns the TTL it now has.
    fn renew(&self, lease_id: &str, increment: Duration) -> impl Future<Output = Result<Duration, VaultError>> + Send;

    /// Revokes the lease (and drops its login). An unknown lease is fine.
    fn revoke(&self, lease_id: &str) -> impl Future<Output = Result<(), VaultError>> + Send;

    /// Revokes every lease of the role, recorded by draftd or not.
    fn revoke_role_leases(&self, role: &str) -> impl Future<Output = Result<(), VaultError>> + Send;

    /// The ids of the role's leases Vault still holds.
    fn leases(&self, role: &str) -> impl Future<Output = Result<Vec<String>, VaultError>> + Send;

    /// The names of the roles under the database mount, whichever connection they use.
    fn list_roles(&self) -> impl Future<Output = Result<Vec<String>, VaultError>> + Send;

    /// Whose the role is, by its connection: draftd's, another's, or absent.
    fn role_connection(&self, role: &str) -> impl Future<Output = Result<RoleConnection, VaultError>> + Send;

    /// The roles Vault holds leases of (`<mount>/creds/<role>/…`), whether the role still exists or not.
    fn lease_roles(&self) -> impl Future<Output = Result<Vec<String>, VaultError>> + Send;
}

// The endpoints vaultrs lacks. Paths are relative to /v1, which vaultrs's middleware adds.

#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.mount}/creds/{self.role}", response = "GenerateCredentialsResponse")]
struct CredsRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

#[derive(Debug, Deserialize)]
struct LeaseResponse {
    lease_duration: u64,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "sys/leases/renew", method = "PUT", response = "LeaseResponse")]
struct RenewLeaseRequest {
    lease_id: String,
    increment: u64,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "sys/leases/revoke", method = "PUT")]
struct RevokeLeaseRequest {
    lease_id: String,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "sys/leases/revoke-prefix/{self.prefix}", method = "PUT")]
struct RevokePrefixRequest {
    #[endpoint(skip)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
struct KeysResponse {
    keys: Vec<String>,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "sys/leases/lookup/{self.prefix}", method = "LIST", response = "KeysResponse")]
struct ListLeasesRequest {
    #[endpoint(skip)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
struct RoleResponse {
    db_name: String,
}

/// vaultrs's own read of a role expects every statement list; only the connection matters here.
#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.mount}/roles/{self.role}", response = "RoleResponse")]
struct ReadRoleRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

/// How draftd signs in, from `[vault]`; secrets read from the environment or a file at login.
#[derive(Debug, Clone)]
enum Login {
    Token { from: SecretSource },
    AppRole { mount: String, role_id: String, secret_id: SecretSource },
    Kubernetes { mount: String, role: String, jwt_file: std::path::PathBuf },
}

/// Where a login secret is read from, each time draftd signs in (so a rotated file is picked up).
#[derive(Debug, Clone)]
enum SecretSource {
    Env(String),
    File(std::path::PathBuf),
}

impl SecretSource {
    fn pick(env: &Option<String>, file: &Option<std::path::PathBuf>) -> Option<Self> {
        file.clone().map(SecretSource::File).or_else(|| env.clone().map(SecretSource::Env))
    }

    async fn read(&self) -> Result<SecretString, VaultError> {
        let text = match self {
            SecretSource::Env(name) => std::env::var(name)
                .map_err(|_| VaultError::Config(format!("environment variable {name} is not set")))?,
            SecretSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| VaultError::Config(format!("reading {}: {e}", path.display())))?,
        };
        Ok(SecretString::from(text.trim().to_owned()))
    }
}

struct Session {
    client: Arc<VaultClient>,
    /// When a login token should be replaced; `None` for a static token.
    refresh_at: Option<Instant>,
}

/// The real implementation on vaultrs.
pub struct OpenBao {
    address: String,
    kv_mount: String,
    db_mount: String,
    connection: String,
    login: Login,
    timeout: Duration,
    session: Mutex<Option<Session>>,
}

impl OpenBao {
    pub fn from_config(config: &VaultConfig) -> Result<Self, VaultError> {
        let missing = |key: &str| VaultError::Config(format!("vault.{key} is required with auth = {:?}", config.auth));
        let login = match config.auth {
            VaultAuth::Token => Login::Token {
                from: SecretSource::pick(&config.token_env, &config.token_file).ok_or_else(|| missing("token_env"))?,
            },
            VaultAuth::Approle => Login::AppRole {
                mount: config.auth_mount.clone().unwrap_or_else(|| "approle".into()),
                role_id: config.role_id.clone().ok_or_else(|| missing("role_id"))?,
                secret_id: SecretSource::pick(&config.secret_id_env, &config.secret_id_file)
                    .ok_or_else(|| missing("secret_id_env"))?,
            },
            VaultAuth::Kubernetes => Login::Kubernetes {
                mount: config.auth_mount.clone().unwrap_or_else(|| "kubernetes".into()),
                role: config.kubernetes_role.clone().ok_or_else(|| missing("kubernetes_role"))?,
                jwt_file: config.jwt_file.clone(),
            },
        };
        Ok(Self {
            address: config.address.clone(),
            kv_mount: config.kv_mount.clone(),
            db_mount: config.database_mount.clone(),
            connection: config.database_connection.clone(),
            login,
            timeout: Duration::from_secs(30),
            session: Mutex::new(None),
        })
    }

    fn new_client(&self, token: &str) -> Result<VaultClient, VaultError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .token(token)
            .timeout(Some(self.timeout))
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        VaultClient::new(settings).map_err(|e| VaultError::Config(e.to_string()))
    }

    /// The signed-in client, logging in (again) when there is no token or it is about to end.
    async fn client(&self) -> Result<Arc<VaultClient>, VaultError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref()
            && s.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(s.client.clone());
        }
        let fresh = self.sign_in().await?;
        let client = fresh.client.clone();
        *session = Some(fresh);
        Ok(client)
    }

    /// Forgets the token, so the next call signs in again (after a 403 on a login token).
    async fn forget_login(&self) {
        if !matches!(self.login, Login::Token { .. }) {
            *self.session.lock().await = None;
        }
    }

    async fn sign_in(&self) -> Result<Session, VaultError> {
        let (mount, auth) = match &self.login {
            Login::Token { from } => {
                let token = from.read().await?;
                return Ok(Session { client: Arc::new(self.new_client(token.expose_secret())?), refresh_at: None });
            }
            Login::AppRole { mount, role_id, secret_id } => {
                let secret_id = secret_id.read().await?;
                let anonymous = self.new_client("")?;
                let auth = vaultrs::auth::approle::login(&anonymous, mount, role_id, secret_id.expose_secret())
                    .await
                    .map_err(|e| login_error(mount, e))?;
                (mount, auth)
            }
            Login::Kubernetes { mount, role, jwt_file } => {
                let jwt = tokio::fs::read_to_string(jwt_file).await.map_err(|e| {
                    VaultError::Config(format!("reading the ServiceAccount token {}: {e}", jwt_file.display()))
                })?;
                let anonymous = self.new_client("")?;
                let auth = vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.trim())
                    .await
                    .map_err(|e| login_error(mount, e))?;
                (mount, auth)
            }
        };
        tracing::info!(mount = %mount, ttl_s = auth.lease_duration, "signed in to Vault");
        // Sign in again at two thirds of the token's life, well before Vault ends it.
        let refresh_at = Instant::now() + Duration::from_secs(auth.lease_duration.max(3) * 2 / 3);
        Ok(Session { client: Arc::new(self.new_client(&auth.client_token)?), refresh_at: Some(refresh_at) })
    }

    /// Runs `call` with the signed-in client; a login token Vault refused is replaced once.
    async fn with_client<T, F, Fut>(&self, what: &str, call: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let client = self.client().await?;
        match call(client).await.map_err(|e| classify(what, e)) {
            Err(VaultError::Denied { .. }) if !matches!(self.login, Login::Token { .. }) => {
                self.forget_login().await;
                call(self.client().await?).await.map_err(|e| classify(what, e))
            }
            other => other,
        }
    }

    /// The keys Vault lists under a lease prefix (leases, or directories ending in `/`); none when
    /// there is nothing under it.
    async fn lease_keys(&self, prefix: &str) -> Result<Vec<String>, VaultError> {
        let listed = self
            .with_client(&format!("listing the leases under {prefix}"), |c| async move {
                let request = ListLeasesRequest { prefix: prefix.to_owned() };
                let response = request.with_middleware(c.middle()).exec(c.http()).await?;
                Ok(response.wrap::<EndpointResult<KeysResponse>>()?.data)
            })
            .await;
        match listed {
            Ok(keys) => Ok(keys.map(|k| k.keys).unwrap_or_default()),
            Err(VaultError::Api { code: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn login_error(mount: &str, e: ClientError) -> VaultError {
    match classify(&format!("login at auth/{mount}"), e) {
        transient if transient.is_transient() => transient,
        other => VaultError::Login(other.to_string()),
    }
}

/// Vault's answers and transport failures, told apart the way the engine needs (retry or not).
fn classify(what: &str, e: ClientError) -> VaultError {
    let api = |code: u16, errors: String| match code {
        403 => VaultError::Denied { what: what.to_owned() },
        _ => VaultError::Api { what: what.to_owned(), code, errors },
    };
    match e {
        ClientError::APIError { code, errors } => api(code, errors.join("; ")),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, content } => {
                let errors = content
                    .as_deref()
                    .and_then(|c| serde_json::from_str::<vaultrs::api::EndpointError>(c).ok())
                    .map(|e| e.errors.join("; "))
                    .unwrap_or_default();
                api(code, errors)
            }
            // Connection refused, reset, timed out: Vault is down or restarting.
            other => VaultError::Unavailable(format!("{what}: {}", error_chain(&other))),
        },
        other => VaultError::Api { what: what.to_owned(), code: 0, errors: error_chain(&other) },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn exec_empty<E: Endpoint>(client: &VaultClient, endpoint: E) -> Result<(), ClientError> {
    endpoint.with_middleware(client.middle()).exec(client.http()).await.map_err(ClientError::from)?;
    Ok(())
}

async fn exec_parse<E: Endpoint>(client: &VaultClient, endpoint: E) -> Result<E::Response, ClientError> {
    Ok(endpoint.with_middleware(client.middle()).exec(client.http()).await?.parse()?)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// `<mount>/creds/<role>/`: the prefix of every lease of a stand's role.
fn lease_prefix(mount: &str, role: &str) -> String {
    format!("{mount}/creds/{role}/")
}

impl Vault for OpenBao {
    async fn read_kv(&self, path: &str) -> Result<BTreeMap<String, SecretString>, VaultError> {
        let full = format!("{}/{path}", self.kv_mount);
        let read = self
            .with_client(&format!("reading {full}"), |c| {
                let (mount, path) = (self.kv_mount.clone(), path.to_owned());
                async move { vaultrs::kv2::read::<HashMap<String, serde_json::Value>>(c.as_ref(), &mount, &path).await }
            })
            .await;
        let values = match read {
            Ok(values) => values,
            Err(VaultError::Api { code: 404, .. }) => return Err(VaultError::KvMissing { path: full }),
            Err(e) => return Err(e),
        };
        Ok(values
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, SecretString::from(text))
            })
            .collect())
    }

    async fn ensure_connection(&self, server: &DbServer) -> Result<(), VaultError> {
        let query = server.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
        // Vault fills in the admin login itself: the URL it stores (and shows on read) has none.
        let url = format!("postgresql://{{{{username}}}}:{{{{password}}}}@{}/{}{query}", server.host, server.database);
        let what = format!("configuring {}/config/{}", self.db_mount, self.connection);
        self.with_client(&what, |c| {
            let (url, server) = (url.clone(), server.clone());
            async move {
                let mut request = PostgreSQLConnectionRequest::builder();
                request
                    .plugin_name("postgresql-database-plugin")
                    .connection_url(url)
                    .username(server.username.clone())
                    // Only draftd's stand roles use this connection.
                    .allowed_roles(vec!["*".to_owned()])
                    .verify_connection(true);
                // A server that trusts Vault's address takes no password.
                if !server.password.expose_secret().is_empty() {
                    request.password(server.password.expose_secret().to_owned());
                }
                vaultrs::database::connection::postgres(
                    c.as_ref(),
                    &self.db_mount,
                    &self.connection,
                    Some(&mut request),
                )
                .await
            }
        })
        .await
    }

    async fn ensure_role(&self, role: &DbRole) -> Result<(), VaultError> {
        let owner = quote_ident(&role.owner).map_err(|e| VaultError::Config(e.to_string()))?;
        // Each login acts as the stand's owner role and nothing else: membership in it is the only
        // grant, and the owner may connect to that stand's database alone.
        let creation = vec![
            format!(
                "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE {owner};"
            ),
            format!("ALTER ROLE \"{{{{name}}}}\" SET role = {owner};"),
            // The admin (Vault's connection user) a member of the login: the revocation statements
            // below end its sessions, and Postgres lets only members of a role (superusers, and
            // pg_signal_backend) do that. CREATEROLE allows this grant (see database.rs's act_as).
            // draftd revokes logins itself first; this is for the leases Vault ends on its own.
            "GRANT \"{{name}}\" TO CURRENT_USER;".to_owned(),
        ];
        // Vault splits statements at semicolons, so no DO blocks: end the login's sessions, then drop
        // it; IF EXISTS keeps a revocation that was interrupted halfway repeatable.
        let revocation = vec![
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';".to_owned(),
            "DROP ROLE IF EXISTS \"{{name}}\";".to_owned(),
        ];
        let what = format!("writing {}/roles/{}", self.db_mount, role.name);
        self.with_client(&what, |c| {
            let (creation, revocation) = (creation.clone(), revocation.clone());
            async move {
                let mut request = SetRoleRequest::builder();
                request
                    .db_name(self.connection.clone())
                    .creation_statements(creation)
                    .revocation_statements(revocation)
                    .default_ttl(secs(role.ttl))
                    .max_ttl(secs(role.max_ttl));
                vaultrs::database::role::set(c.as_ref(), &self.db_mount, &role.name, Some(&mut request)).await
            }
        })
        .await
    }

    async fn delete_role(&self, role: &str) -> Result<(), VaultError> {
        let what = format!("deleting {}/roles/{role}", self.db_mount);
        match self
            .with_client(
                &what,
                |c| async move { vaultrs::database::role::delete(c.as_ref(), &self.db_mount, role).await },
            )
            .await
        {
            Err(VaultError::Api { code: 404, .. }) => Ok(()),
            other => other,
        }
    }

    async fn issue(&self, role: &str) -> Result<LeasedLogin, VaultError> {
        let what = format!("reading {}/creds/{role}", self.db_mount);
        let result = self
            .with_client(&what, |c| async move {
                let request = CredsRequest { mount: self.db_mount.clone(), role: role.to_owned() };
                let response = request.with_middleware(c.middle()).exec(c.http()).await?;
                Ok(response.wrap::<EndpointResult<GenerateCredentialsResponse>>()?)
            })
            .await?;
        let data = result.data.ok_or_else(|| VaultError::Api {
            what,
            code: 200,
            errors: "no credentials in the answer".into(),
        })?;
        Ok(LeasedLogin {
            lease_id: result.lease_id,
            username: data.username,
            password: SecretString::from(data.password),
            lease_duration: Duration::from_secs(u64::from(result.lease_duration)),
        })
    }

    async fn renew(&self, lease_id: &str, increment: Duration) -> Result<Duration, VaultError> {
        let answer = self
            .with_client("renewing a lease", |c| async move {
                let request = RenewLeaseRequest { lease_id: lease_id.to_owned(), increment: increment.as_secs() };
                exec_parse(c.as_ref(), request).await
            })
            .await?;
        Ok(Duration::from_secs(answer.lease_duration))
    }

    async fn revoke(&self, lease_id: &str) -> Result<(), VaultError> {
        let revoked = self
            .with_client("revoking a lease", |c| async move {
                exec_empty(c.as_ref(), RevokeLeaseRequest { lease_id: lease_id.to_owned() }).await
            })
            .await;
        match revoked {
            // Vault answers 400 "invalid lease" for one that has expired and gone: revoked already.
            Err(VaultError::Api { code: 400, errors, .. }) if errors.contains("invalid lease") => Ok(()),
            other => other,
        }
    }

    async fn revoke_role_leases(&self, role: &str) -> Result<(), VaultError> {
        let prefix = lease_prefix(&self.db_mount, role);
        self.with_client(&format!("revoking the leases under {prefix}"), |c| {
            let prefix = prefix.clone();
            // Vault refuses writes to a path ending in '/', and adds the slash itself, so a prefix
            // of draft_a never reaches draft_ab's leases.
            let prefix = prefix.trim_end_matches('/').to_owned();
            async move { exec_empty(c.as_ref(), RevokePrefixRequest { prefix }).await }
        })
        .await
    }

    async fn leases(&self, role: &str) -> Result<Vec<String>, VaultError> {
        let prefix = lease_prefix(&self.db_mount, role);
        Ok(self.lease_keys(&prefix).await?.into_iter().map(|k| format!("{prefix}{k}")).collect())
    }

    async fn list_roles(&self) -> Result<Vec<String>, VaultError> {
        let what = format!("listing {}/roles", self.db_mount);
        let listed = self
            .with_client(&what, |c| async move { vaultrs::database::role::list(c.as_ref(), &self.db_mount).await })
            .await;
        match listed {
            Ok(list) => Ok(list.keys),
            // Vault answers 404 to a list with nothing in it.
            Err(VaultError::Api { code: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn role_connection(&self, role: &str) -> Result<RoleConnection, VaultError> {
        let what = format!("reading {}/roles/{role}", self.db_mount);
        let read = self
            .with_client(&what, |c| async move {
                let request = ReadRoleRequest { mount: self.db_mount.clone(), role: role.to_owned() };
                vaultrs::api::exec_with_result(c.as_ref(), request).await
            })
            .await;
        match read {
            Ok(r) if r.db_name == self.connection => Ok(RoleConnection::Ours),
            Ok(_) => Ok(RoleConnection::Other),
            Err(VaultError::Api { code: 404, .. }) => Ok(RoleConnection::Absent),
            Err(e) => Err(e),
        }
    }

    async fn lease_roles(&self) -> Result<Vec<String>, VaultError> {
        let prefix = format!("{}/creds/", self.db_mount);
        // Each role is a directory there: `draft_x/`.
        Ok(self.lease_keys(&prefix).await?.into_iter().map(|k| k.trim_end_matches('/').to_owned()).collect())
    }
}
