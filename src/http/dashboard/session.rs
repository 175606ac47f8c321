//! The dashboard's login session and CSRF protection, without server-side state.
//!
//! The session cookie is `<expiry>.<nonce>.<mac>`: a MAC keyed by the API token over the expiry and a
//! random nonce, so any replica holding the token verifies it, and rotating the token logs everyone out.
//! Each POST form carries a synchronizer token derived from the session's nonce (a MAC as well), which a
//! page of another site cannot read; a POST whose `Origin` names another site is refused besides.

use std::sync::Once;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::super::{ApiError, AppState};
use super::page::Page;

pub const COOKIE_NAME: &str = "draftd_session";
/// A working day: long enough not to interrupt anyone, short enough that a forgotten browser does not
/// stay logged in for good (a stateless session cannot be revoked before it expires).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// Why a request carries no valid session; logged at debug level, never with the cookie's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the API token is not configured, so nobody can log in")]
    Disabled,
    #[error("no session cookie")]
    Missing,
    #[error("the session cookie is not <expiry>.<nonce>.<mac>")]
    Malformed,
    #[error("the session cookie's signature does not match (forged, or the token was rotated)")]
    BadSignature,
    #[error("the session has expired")]
    Expired,
}

/// Why a POST is refused even though its session is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the form's CSRF token is missing")]
    Missing,
    #[error("the form's CSRF token does not match the session")]
    Mismatch,
    #[error("the request comes from another origin")]
    CrossOrigin,
}

/// A request with a valid session cookie.
#[derive(Debug, Clone)]
pub struct Session {
    csrf: String,
}

impl Session {
    /// The token every POST form of this session carries in its `csrf` field.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Checks a POST of this session: its origin, then its form's `csrf` field.
    pub fn check_post(&self, state: &AppState, headers: &HeaderMap, given: Option<&str>) -> Result<(), CsrfError> {
        check_origin(headers, state.public_url())?;
        let given = given.filter(|g| !g.is_empty()).ok_or(CsrfError::Missing)?;
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) { Ok(()) } else { Err(CsrfError::Mismatch) }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let verified = match state.api_token() {
            None => Err(SessionError::Disabled),
            Some(token) => cookie_value(&parts.headers)
                .ok_or(SessionError::Missing)
                .and_then(|value| verify(token, value, Utc::now())),
        };
        match verified {
            Ok(session) => Ok(session),
            Err(reason) => {
                tracing::debug!(%reason, path = %parts.uri.path(), "dashboard request without a session");
                if parts.method == Method::GET || parts.method == Method::HEAD {
                    let here = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/stands");
                    Err(Redirect::to(&login_path(here)).into_response())
                } else {
                    Err(Page(ApiError::Unauthorized("log in first: this needs a dashboard session")).into_response())
                }
            }
        }
    }
}

/// `/login?next=<here>`, with `here` percent-encoded.
pub fn login_path(here: &str) -> String {
    let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
    format!("/login?next={next}")
}

/// Where a login goes next: only a path on this site; anything else (`//host`, `/\host`, which browsers
/// read as another host, or a full URL) goes to the stand list.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/stands",
    }
}

/// A new session for the holder of `token`, valid for [`SESSION_TTL`] from `now`: the cookie's value.
pub fn issue(token: &SecretString, now: DateTime<Utc>) -> String {
    let expiry = now.timestamp() + SESSION_TTL.as_secs() as i64;
    // v4 UUIDs come from the operating system's CSPRNG; the nonce keys each session's CSRF token.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mac = hex::encode(session_mac(token, expiry, &nonce).finalize().into_bytes());
    format!("{expiry}.{nonce}.{mac}")
}

/// The session in cookie `value`, if `token` signed it and it has not expired at `now`.
pub fn verify(token: &SecretString, value: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
    let mut parts = value.split('.');
    let (Some(expiry), Some(nonce), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SessionError::Malformed);
    };
    let expiry: i64 = expiry.parse().map_err(|_| SessionError::Malformed)?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SessionError::Malformed);
    }
    let mac = hex::decode(mac).map_err(|_| SessionError::Malformed)?;
    // Constant time: `verify_slice` compares in constant time.
    session_mac(token, expiry, nonce).verify_slice(&mac).map_err(|_| SessionError::BadSignature)?;
    if expiry <= now.timestamp() {
        return Err(SessionError::Expired);
    }
    Ok(Session { csrf: csrf_token(token, nonce) })
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(value: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let max_age = SESSION_TTL.as_secs();
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie values are hex, digits and dots")
}

/// `Set-Cookie` that removes the session from the browser.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}"))
        .expect("a fixed cookie")
}

/// Whether browsers will send a `Secure` cookie to `public_url`: over https, and on loopback names and
/// addresses, which browsers treat as secure contexts even over plain http.
pub fn cookie_secure(public_url: &str) -> bool {
    let Ok(url) = url::Url::parse(public_url) else { return false };
    if url.scheme() == "https" {
        return true;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether the session cookie gets `Secure`; warns once per process when it cannot.
pub fn secure_for(public_url: &str) -> bool {
    static WARNED: Once = Once::new();
    let secure = cookie_secure(public_url);
    if !secure {
        WARNED.call_once(|| {
            tracing::warn!(
                public_url,
                "public_url is neither https nor a loopback address: the dashboard's session cookie is sent \
                 without Secure, so anyone on the network path can read it; serve draftd behind https"
            );
        });
    }
    secure
}

/// A POST whose `Origin` is present must name this site: the request's `Host`, or `public_url` when a
/// proxy in front rewrites `Host`. Browsers send `Origin` on every cross-site POST.
pub fn check_origin(headers: &HeaderMap, public_url: &str) -> Result<(), CsrfError> {
    let Some(origin) = headers.get(ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| CsrfError::CrossOrigin)?;
    let Some((_, authority)) = origin.split_once("://") else { return Err(CsrfError::CrossOrigin) };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return Ok(());
    }
    let public = public_url.trim_end_matches('/');
    if !public.is_empty() && public.eq_ignore_ascii_case(origin) {
        return Ok(());
    }
    Err(CsrfError::CrossOrigin)
}

/// The value of our cookie among all `Cookie` headers, if any.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

fn keyed(token: &SecretString) -> HmacSha256 {
    HmacSha256::new_from_slice(token.expose_secret().as_bytes()).expect("HMAC takes keys of any length")
}

/// The prefixes keep the two MACs apart: a CSRF token is never a valid session signature.
fn session_mac(token: &SecretString, expiry: i64, nonce: &str) -> HmacSha256 {
    let mut mac = keyed(token);
    mac.update(format!("session|{expiry}|{nonce}").as_bytes());
    mac
}

fn csrf_token(token: &SecretString, nonce: &str) -> String {
    let mut mac = keyed(token);
    mac.update(format!("csrf|{nonce}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_only_under_its_token() {
        let now = Utc::now();
        let value = issue(&token("t1"), now);
        let session = verify(&token("t1"), &value, now).unwrap();
        let nonce = value.split('.').nth(1).unwrap();
        assert_eq!(session.csrf(), csrf_token(&token("t1"), nonce));
        assert_eq!(verify(&token("t2"), &value, now).unwrap_err(), SessionError::BadSignature);
        let later = now + chrono::Duration::from_std(SESSION_TTL).unwrap();
        assert_eq!(verify(&token("t1"), &value, later).unwrap_err(), SessionError::Expired);
    }

    #[test]
    fn a_changed_expiry_or_nonce_breaks_the_signature() {
        let now = Utc::now();
        let value = issue(&token("t"), now);
        let (expiry, rest) = value.split_once('.').unwrap();
        let later = format!("{}.{rest}", expiry.parse::<i64>().unwrap() + 3600);
        assert_eq!(verify(&token("t"), &later, now).unwrap_err(), SessionError::BadSignature);
        let (head, mac) = value.rsplit_once('.').unwrap();
        let (expiry, nonce) = head.split_once('.').unwrap();
        let other = format!("{expiry}.{}.{mac}", nonce.replace(|c: char| c != '0', "0"));
        assert_eq!(verify(&token("t"), &other, now).unwrap_err(), SessionError::BadSignature);
        for bad in ["", "a.b", "1.2.3.4", "x.ab.cd", "1.zz.00", "1.ab.not-hex"] {
            assert_eq!(verify(&token("t"), bad, now).unwrap_err(), SessionError::Malformed, "{bad}");
        }
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/stands/3?x=1")), "/stands/3?x=1");
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example/", "stands", "/a b", ""] {
            assert_eq!(safe_next(Some(bad)), "/stands", "{bad}");
        }
        assert_eq!(safe_next(None), "/stands");
        assert_eq!(login_path("/stands/3?a=b&c"), "/login?next=%2Fstands%2F3%3Fa%3Db%26c");
    }

    #[test]
    fn secure_on_https_and_loopback_only() {
        for url in ["https://draftd.example.com", "http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:80"] {
            assert!(cookie_secure(url), "{url}");
        }
        for url in ["http://draftd.example.com", "http://10.0.0.1:8080", "not a url"] {
            assert!(!cookie_secure(url), "{url}");
        }
    }

    #[test]
    fn origin_must_match_host_or_public_url() {
        let headers = |origin: Option<&str>, host: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            if let Some(v) = host {
                h.insert(HOST, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let public = "https://draftd.example.com/";
        assert_eq!(check_origin(&headers(None, None), public), Ok(()));
        assert_eq!(check_origin(&headers(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), public), Ok(()));
        assert_eq!(check_origin(&headers(Some("https://draftd.example.com"), Some("10.0.0.5:8080")), public), Ok(()));
        for evil in ["https://evil.example", "null", "http://127.0.0.1:8081"] {
            assert_eq!(
                check_origin(&headers(Some(evil), Some("127.0.0.1:8080")), public),
                Err(CsrfError::CrossOrigin),
                "{evil}"
            );
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; draftd_session=v.w.x"));
        assert_eq!(cookie_value(&h), Some("v.w.x"));
        let flags = set_cookie("1.ab.cd", true);
        assert_eq!(flags, "draftd_session=1.ab.cd; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict; Secure");
    }
}
