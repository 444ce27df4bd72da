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

/// The email of a user (for the operators' audit log).
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
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// `orderflow users promote <email>`.
pub async fn promote(pool: &MySqlPool, email: &str) -> Result<(), PromoteError> {
    let email = email.trim().to_lowercase();
    let done = sqlx::query("UPDATE users SET role = 'ADMIN' WHERE email = ?")
        .bind(&email)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 && find_by_email(pool, &email).await?.is_none() {
        return Err(PromoteError::NoSuchUser(email));
    }
    Ok(())
}

/// The ADMIN_EMAIL/ADMIN_PASSWORD bootstrap: creates the account as ADMIN, or promotes it if
/// it exists (its password is left alone: the environment must not silently reset it).
pub async fn ensure_admin(
    pool: &MySqlPool,
    email: &str,
    password: &str,
) -> Result<(), PromoteError> {
    let email = email.trim().to_lowercase();
    if find_by_email(pool, &email).await?.is_none() {
        let hash = password::hash(password.to_owned()).await;
        match insert(pool, &email, "Administrator", &hash, Role::Admin).await {
            Ok(_) | Err(CreateUserError::EmailTaken) => {}
            Err(CreateUserError::Db(e)) => return Err(e.into()),
        }
    }
    promote(pool, &email).await
}
