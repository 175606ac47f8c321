//! The one way a caller's token is checked, for the API and the dashboard alike.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares digests, so neither the token's content nor its length leaks through timing. The API's
/// bearer token and the dashboard's login form are both checked this way.
pub(super) fn token_matches(token: &SecretString, given: &str) -> bool {
    Sha256::digest(given.trim().as_bytes()).ct_eq(&Sha256::digest(token.expose_secret().as_bytes())).into()
}
