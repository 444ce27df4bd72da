//! SQL of the users table.

use sqlx::MySqlPool;
use thiserror::Error;

use super::{password, Role};
use crate::db;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub password_hash: String,
}

#[derive(Debug, Error)]
pub enum CreateUserError {
    #[error("email is already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub async fn insert(
    pool: &MySqlPool,
    email: &str,
    name: &str,
    password_hash: &str,
    role: Role,
) -> Result<i64, CreateUserError> {
    let res =
        sqlx::query("INSERT INTO users (email, password_hash, name, role) VALUES (?, ?, ?, ?)")
            .bind(email)
            .bind(password_hash)
            .bind(name)
            .bind(role.as_str())
            .execute(pool)
            .await;
    match res {
        Ok(done) => Ok(done.last_insert_id() as i64),
        Err(e) if db::is_unique_violation(&e) => Err(CreateUserError::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

pub async fn find_by_email(pool: &MySqlPool, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, password_hash FROM users WHERE email = ?")
        .bind(email)
        .fetch_optional(pool)
        .await
}

/// The stored role of a user, `None` if the account no longer exists (the primary key
/// lookup every authenticated request makes).
pub async fn role_of(pool: &MySqlPool, id: i64) -> Result<Option<Role>, sqlx::Error> {
    let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    role.map(|r| Role::try_from(r).map_err(|e| sqlx::Error::Decode(e.into())))
        .transpose()
}

/// The email of a user (for the operators' action log).
pub async fn email_of(pool: &MySqlPool, id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT email FROM users WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, Error)]
pub enum PromoteError {
    #[error("no user with email {0}")]
    NoSuchUser(String),
    /// The email column takes the two for one address (it ignores case and accents), but
    /// they are not the same string: promoting it would hand the role to whoever registered
    /// the look-alike.
    #[error(
        "no user with email {asked}; the account {found} differs from it only in case or accents — \
         promote it by its exact address if it is the one you mean"
    )]
    LookAlike { asked: String, found: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The account stored under `email`, compared as the unique key does (case- and
/// accent-insensitively): at most one.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Holder {
    id: i64,
    email: String,
    #[sqlx(try_from = "String")]
    role: Role,
    password_hash: String,
}

async fn holder_of(pool: &MySqlPool, email: &str) -> Result<Option<Holder>, sqlx::Error> {
    sqlx::query_as("SELECT id, email, role, password_hash FROM users WHERE email = ?")
        .bind(email)
        .fetch_optional(pool)
        .await
}

async fn make_admin(pool: &MySqlPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET role = 'ADMIN' WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// `orderflow users promote <email>`: the account whose email is exactly `email` (after
/// trimming and lower-casing, as every stored email is), never a look-alike.
pub async fn promote(pool: &MySqlPool, email: &str) -> Result<(), PromoteError> {
    let email = email.trim().to_lowercase();
    match holder_of(pool, &email).await? {
        Some(h) if h.email == email => Ok(make_admin(pool, h.id).await?),
        Some(h) => Err(PromoteError::LookAlike {
            asked: email,
            found: h.email,
        }),
        None => Err(PromoteError::NoSuchUser(email)),
    }
}

/// What the ADMIN_EMAIL / ADMIN_PASSWORD bootstrap found and did
/// (docs/adr/0020-admin-bootstrap.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// No account had the address: it was created, as ADMIN, with ADMIN_PASSWORD.
    Created,
    /// The account, exactly this address, is an administrator already (its password is left
    /// alone).
    AlreadyAdmin,
    /// An account with exactly this address whose password is ADMIN_PASSWORD: promoted.
    Promoted,
    /// An account the email column takes for this address, which the configured password
    /// does not open (or whose address is only a look-alike): someone else may have
    /// registered it, so it is left as it is.
    Refused { found: String },
}

/// The ADMIN_EMAIL / ADMIN_PASSWORD bootstrap. Registration is public and unverified, so an
/// existing account is made ADMIN only if it proves to be the operator's: exactly this
/// address, and ADMIN_PASSWORD as its password. It never resets a password.
pub async fn ensure_admin(
    pool: &MySqlPool,
    email: &str,
    password: &str,
) -> Result<Bootstrap, sqlx::Error> {
    let email = email.trim().to_lowercase();
    // Twice at most: a registration may take the address between the look-up and the insert.
    for _ in 0..2 {
        let Some(holder) = holder_of(pool, &email).await? else {
            let hash = password::hash(password.to_owned()).await;
            match insert(pool, &email, "Administrator", &hash, Role::Admin).await {
                Ok(_) => return Ok(Bootstrap::Created),
                Err(CreateUserError::EmailTaken) => continue,
                Err(CreateUserError::Db(e)) => return Err(e),
            }
        };
        // A look-alike is someone else's, whatever its role (an administrator made so by an
        // earlier release's bootstrap is reported, not left unmentioned).
        if holder.email != email {
            return Ok(Bootstrap::Refused {
                found: holder.email,
            });
        }
        if holder.role == Role::Admin {
            return Ok(Bootstrap::AlreadyAdmin);
        }
        if !password::verify(password.to_owned(), Some(holder.password_hash)).await {
            return Ok(Bootstrap::Refused {
                found: holder.email,
            });
        }
        make_admin(pool, holder.id).await?;
        return Ok(Bootstrap::Promoted);
    }
    Ok(Bootstrap::Refused { found: email })
}
