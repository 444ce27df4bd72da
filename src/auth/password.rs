//! argon2id with the crate's default parameters (OWASP's minimum: 19 MiB, 2 passes).
//! Hashing is CPU-bound for tens of milliseconds, so it runs on the blocking pool and never
//! stalls the async workers that serve other requests.
//!
//! At most one hash per core runs at a time: each takes 19 MiB, and the blocking pool would
//! otherwise run a login storm hundreds wide (bench/ saw the process reach ~1 GB RSS while
//! logging in 64 clients at once). Extra logins wait their turn, which costs them latency the
//! cores could not have provided anyway.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use std::sync::LazyLock;

use tokio::sync::Semaphore;

/// A password's length in characters, as registration accepts it; login does not hash a
/// candidate longer than four times the maximum (its bytes), whatever it is.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs `work` on the blocking pool once a hashing slot is free.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let _slot = HASHING
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(work)
        .await
        .expect("hashing task does not panic")
}

/// Verified against when the account does not exist, so that "no such user" costs as much
/// time as "wrong password" and login timing does not reveal which emails are registered.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_blocking("not-a-real-password"));

fn hash_blocking(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail on a valid salt")
        .to_string()
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

pub async fn hash(password: String) -> String {
    hashing(move || hash_blocking(&password)).await
}

/// `hash = None` (unknown account) still spends one verification and returns false.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    hashing(move || match hash {
        Some(h) => verify_blocking(&password, &h),
        None => {
            verify_blocking(&password, &DUMMY_HASH);
            false
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash_blocking("correct horse");
        let b = hash_blocking("correct horse");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_blocking("correct horse", &a));
        assert!(!verify_blocking("battery staple", &a));
        assert!(!verify_blocking("correct horse", "not a phc string"));
    }
}
