//! Who may open a stand's URL, as pure functions: the signed cookie that says whom a forge let in
//! to which repositories, and the per-run access token that lets a program in without a person.
//!
//! Both are MACs under one key that every replica holds, so `/access/check` answers from the
//! request alone, with no look-up: verifying is one HMAC-SHA256 over a few hundred bytes. Two keys
//! are derived from the configured one, so a cookie can never pass for a token or the other way.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::ForgeKind;
use crate::stand::{RunId, StandId};

type HmacSha256 = Hmac<Sha256>;

/// The Secret in each private stand's namespace holding its current access token; Jobs get it as
/// environment variables.
pub const ACCESS_SECRET: &str = "draftd-access";
/// The Secret's key, so `envFrom` gives `DRAFTD_ACCESS_TOKEN`.
pub const TOKEN_KEY: &str = "DRAFTD_ACCESS_TOKEN";

/// Tokens start with this, so a leaked one is recognisable (secret scanners, logs) and versioned.
const TOKEN_PREFIX: &str = "da1";
/// Cookies start with this; a change of format changes it.
const COOKIE_VERSION: &str = "v1";
/// A browser keeps grants for a handful of stands at most; a bigger cookie is refused rather than
/// parsed, so the check's cost stays bounded whatever a client sends.
const MAX_COOKIE_BYTES: usize = 3800;
/// Grants kept in one cookie: the newest win when more are signed in.
const MAX_GRANTS: usize = 16;

/// The configured access key, with the two keys derived from it.
#[derive(Clone)]
pub struct AccessKey {
    cookie: Vec<u8>,
    token: Vec<u8>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(***)")
    }
}

/// The key is shorter than HMAC-SHA256 needs to be as strong as its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the access key must be at least 32 bytes (it is {0}); make one with `openssl rand -base64 48`")]
pub struct WeakKey(pub usize);

impl AccessKey {
    pub const MIN_BYTES: usize = 32;

    pub fn new(key: &SecretString) -> Result<Self, WeakKey> {
        let bytes = key.expose_secret().as_bytes();
        if bytes.len() < Self::MIN_BYTES {
            return Err(WeakKey(bytes.len()));
        }
        let derive = |purpose: &str| {
            let mut mac = HmacSha256::new_from_slice(bytes).expect("HMAC takes any key length");
            mac.update(purpose.as_bytes());
            mac.finalize().into_bytes().to_vec()
        };
        Ok(AccessKey { cookie: derive("draftd access cookie v1"), token: derive("draftd access token v1") })
    }

    fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so no two different lists of parts give the same input.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The access token of `run` of `stand`: new each run, the same whenever it is asked for again,
    /// so the Secret, the API and a resumed run agree without storing it anywhere.
    pub fn token(&self, stand: StandId, run: RunId) -> AccessToken {
        let (s, r) = (stand.get().to_string(), run.get().to_string());
        let mac = Self::mac(&self.token, &[s.as_bytes(), r.as_bytes()]).finalize().into_bytes();
        AccessToken(SecretString::from(format!("{TOKEN_PREFIX}.{s}.{r}.{}", b64(&mac))))
    }

    /// The stand and run a token was made for, when this key made it.
    pub fn verify_token(&self, token: &str) -> Result<(StandId, RunId), TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(s), Some(r), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let (stand, run) = match (s.parse::<i64>(), r.parse::<i64>()) {
            (Ok(s), Ok(r)) if s > 0 && r > 0 => (StandId::new(s), RunId::new(r)),
            _ => return Err(TokenError::Malformed),
        };
        let mac = unb64(mac).ok_or(TokenError::Malformed)?;
        Self::mac(&self.token, &[s.as_bytes(), r.as_bytes()])
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        Ok((stand, run))
    }

    /// The cookie value holding `grants`, signed.
    pub fn seal(&self, grants: &Grants) -> String {
        let payload = b64(&serde_json::to_vec(grants).expect("grants serialise"));
        let mac = Self::mac(&self.cookie, &[COOKIE_VERSION.as_bytes(), payload.as_bytes()]).finalize().into_bytes();
        format!("{COOKIE_VERSION}.{payload}.{}", b64(&mac))
    }

    /// The grants in a cookie value this key signed, expired ones included (the caller knows the time).
    pub fn open(&self, value: &str) -> Result<Grants, CookieError> {
        if value.len() > MAX_COOKIE_BYTES {
            return Err(CookieError::TooLarge);
        }
        let mut parts = value.split('.');
        let (Some(COOKIE_VERSION), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CookieError::Malformed);
        };
        let mac = unb64(mac).ok_or(CookieError::Malformed)?;
        Self::mac(&self.cookie, &[COOKIE_VERSION.as_bytes(), payload.as_bytes()])
            .verify_slice(&mac)
            .map_err(|_| CookieError::BadSignature)?;
        let json = unb64(payload).ok_or(CookieError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| CookieError::Malformed)
    }
}

/// A stand's access token; shown only to API-token holders and kept in the stand's Secret.
#[derive(Clone)]
pub struct AccessToken(pub SecretString);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

impl AccessToken {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Why a token was not taken; said in logs and audit rows, never with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not da1.<stand>.<run>.<mac>")]
    Malformed,
    #[error("the access token's signature does not match (forged, or the access key was rotated)")]
    BadSignature,
}

/// Why a cookie was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("the access cookie is not v1.<payload>.<mac>")]
    Malformed,
    #[error("the access cookie is larger than any draftd makes")]
    TooLarge,
    #[error("the access cookie's signature does not match (tampered with, or the access key was rotated)")]
    BadSignature,
}

/// What a cookie says: each a person's forge let in, to which repository, until when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(rename = "g")]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "f")]
    pub forge: ForgeKind,
    /// Lowercased: both forges match repository paths case-insensitively.
    #[serde(rename = "r")]
    pub repo: String,
    /// The person's login, for the audit trail and the app (never a credential).
    #[serde(rename = "u")]
    pub login: String,
    /// Unix seconds; after it the forge is asked again.
    #[serde(rename = "x")]
    pub until: i64,
}

impl Grants {
    /// The grant letting someone into `repo` on `forge` at `now`, if any.
    pub fn admits(&self, forge: ForgeKind, repo: &str, now: i64) -> Option<&Grant> {
        self.grants.iter().find(|g| g.forge == forge && g.until > now && g.repo.eq_ignore_ascii_case(repo))
    }

    /// These grants with `new` in place of any for the same repository, expired ones dropped, at
    /// most [`MAX_GRANTS`] (the newest).
    pub fn with(mut self, new: Grant, now: i64) -> Grants {
        self.grants.retain(|g| g.until > now && !(g.forge == new.forge && g.repo.eq_ignore_ascii_case(&new.repo)));
        self.grants.push(new);
        self.grants.sort_by_key(|g| std::cmp::Reverse(g.until));
        self.grants.truncate(MAX_GRANTS);
        self
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AccessKey {
        AccessKey::new(&SecretString::from("k".repeat(40))).unwrap()
    }

    fn grant(repo: &str, until: i64) -> Grant {
        Grant { forge: ForgeKind::Github, repo: repo.into(), login: "alice".into(), until }
    }

    #[test]
    fn a_short_key_is_refused_with_how_to_make_one() {
        let err = AccessKey::new(&SecretString::from("short")).unwrap_err();
        assert_eq!(err, WeakKey(5));
        assert!(err.to_string().contains("openssl rand"));
    }

    #[test]
    fn a_token_names_its_stand_and_run_and_no_other_key_or_edit_passes() {
        let token = key().token(StandId::new(12), RunId::new(345));
        assert!(token.expose().starts_with("da1.12.345."));
        assert_eq!(key().verify_token(token.expose()), Ok((StandId::new(12), RunId::new(345))));
        assert_eq!(
            key().token(StandId::new(12), RunId::new(345)).expose(),
            token.expose(),
            "the same when asked again"
        );
        let other = AccessKey::new(&SecretString::from("o".repeat(40))).unwrap();
        assert_eq!(other.verify_token(token.expose()), Err(TokenError::BadSignature));
        let moved = token.expose().replacen(".345.", ".346.", 1);
        assert_eq!(key().verify_token(&moved), Err(TokenError::BadSignature));
        assert_eq!(key().verify_token("da1.1.2"), Err(TokenError::Malformed));
        assert_eq!(key().verify_token("da1.-1.2.AAAA"), Err(TokenError::Malformed));
        assert!(format!("{token:?}").contains("***"), "never printed");
    }

    #[test]
    fn a_sealed_cookie_opens_to_its_grants_and_a_tampered_one_does_not() {
        let grants = Grants::default().with(grant("acme/shop", 2_000), 1_000);
        let value = key().seal(&grants);
        assert_eq!(key().open(&value), Ok(grants.clone()));
        // Another payload under the old MAC: the classic tamper.
        let forged = key().seal(&Grants::default().with(grant("acme/secret", 2_000), 1_000));
        let (_, forged_payload) = forged.split_once('.').unwrap();
        let (forged_payload, _) = forged_payload.split_once('.').unwrap();
        let mac = value.rsplit_once('.').unwrap().1;
        assert_eq!(key().open(&format!("v1.{forged_payload}.{mac}")), Err(CookieError::BadSignature));
        assert_eq!(key().open("v1.e30"), Err(CookieError::Malformed));
        assert_eq!(key().open(&"v1.".repeat(2000)), Err(CookieError::TooLarge));
        // A token's key is not a cookie's: a token never opens as a cookie.
        let token = key().token(StandId::new(1), RunId::new(1));
        assert!(key().open(token.expose()).is_err());
    }

    #[test]
    fn grants_admit_their_repository_until_they_expire_in_any_case() {
        let grants = Grants::default().with(grant("acme/shop", 2_000), 1_000);
        assert!(grants.admits(ForgeKind::Github, "ACME/Shop", 1_999).is_some());
        assert!(grants.admits(ForgeKind::Github, "acme/shop", 2_000).is_none(), "expired");
        assert!(grants.admits(ForgeKind::Gitlab, "acme/shop", 1_500).is_none(), "another forge");
        assert!(grants.admits(ForgeKind::Github, "acme/other", 1_500).is_none());
    }

    #[test]
    fn a_new_grant_replaces_its_repositorys_and_drops_expired_ones_within_the_bound() {
        let mut grants = Grants::default().with(grant("acme/old", 500), 100).with(grant("acme/shop", 900), 100);
        grants = grants.with(grant("acme/shop", 2_000), 600);
        assert_eq!(grants.grants, vec![grant("acme/shop", 2_000)], "acme/old expired at 500");
        for i in 0..40 {
            grants = grants.with(grant(&format!("acme/r{i}"), 3_000 + i), 600);
        }
        assert_eq!(grants.grants.len(), MAX_GRANTS);
        assert!(key().seal(&grants).len() < MAX_COOKIE_BYTES, "a full cookie still opens");
    }
}
