//! What stands between a database URL and a working store, said as its cause and its fix.
//!
//! A pool that cannot connect retries until its acquire time-out and then reports only that
//! it timed out; the refused connection, the failed password or the missing database behind it
//! is lost. So before the pool is made, the URL is parsed here and PostgreSQL is tried once,
//! directly, and a failure becomes a [`StoreError::Connect`] that names what went wrong. No
//! message holds the URL itself (the caller prints it with its password hidden).

use std::io;
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sea_orm::DbErr;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};

use super::StoreError;

const POSTGRES_FORM: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";

/// Checks a SQLite URL, and that the directory its file goes into exists. Returns the file,
/// `None` for an in-memory database.
pub(super) fn sqlite(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    let options = SqliteConnectOptions::from_str(url).map_err(|e| {
        StoreError::Connect(format!(
            "not a SQLite URL (sqlite://PATH, e.g. sqlite://refund-service.db): {}",
            crate::error_chain::causes(&e)
        ))
    })?;
    let file = options.get_filename();
    if url.starts_with("sqlite::memory:") || file.as_os_str().is_empty() {
        return Ok(None);
    }
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::Connect(format!(
            "the directory {} of the SQLite file does not exist: create it, or give \
             --database-url a file in an existing directory",
            dir.display()
        )));
    }
    if !file.exists() && super::url_has_param(url, "mode") && !url.contains("mode=rwc") {
        return Err(StoreError::Connect(format!(
            "the SQLite file {} does not exist, and the URL's `mode` does not create it: use \
             mode=rwc, or leave `mode` out",
            file.display()
        )));
    }
    Ok(Some(file.to_path_buf()))
}

/// Takes the SQLite database at `file` for this process alone: an exclusive lock (`flock`) on
/// `<file>.lock` beside it, held while the returned file is open, with our process id in it
/// for the message another process gets. A lock file rather than the database file itself:
/// closing any descriptor of the database would drop SQLite's own POSIX locks on it.
pub(super) fn lock_sqlite(file: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};

    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The same database reached by another path (a symlink, `./`) is the same lock.
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let lock_path = dir.join(format!("{name}.lock"));
    let cannot = |e: io::Error| {
        StoreError::Connect(format!(
            "cannot open the lock file {} of the SQLite database: {e}",
            lock_path.display()
        ))
    };
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(cannot)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = match holder.trim() {
                pid if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) => {
                    format!("process {pid}")
                }
                _ => "another process".to_owned(),
            };
            return Err(StoreError::Connect(format!(
                "the SQLite database {} is in use by another refund-service ({holder} holds                  {}): SQLite serves one process only. Stop that one, or use PostgreSQL                  (--database-url postgres://...) to run several replicas",
                dir.join(&name).display(),
                lock_path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
    }
    // Ours now: say who holds it.
    lock.set_len(0).map_err(cannot)?;
    lock.rewind().map_err(cannot)?;
    writeln!(lock, "{}", std::process::id()).map_err(cannot)?;
    Ok(lock)
}

/// Parses a PostgreSQL URL and opens one connection with it, within `timeout`.
pub(super) async fn postgres(url: &str, timeout: Duration) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| {
            StoreError::Connect(format!(
                "not a PostgreSQL URL ({POSTGRES_FORM}): {}",
                crate::error_chain::causes(&e)
            ))
        })?
        .disable_statement_logging();
    let server = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let connection = match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await
    {
        Err(_) => {
            return Err(StoreError::Connect(format!(
                "no answer from PostgreSQL at {server} within {}s: is the host right, and does a \
                 firewall let the connection through?",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(StoreError::Connect(postgres_cause(&e, &options, &server))),
        Ok(Ok(connection)) => connection,
    };
    // Only a check: the pool makes its own connections.
    connection.close().await.ok();
    Ok(())
}

/// A connection failure in the words an operator acts on.
fn postgres_cause(e: &sqlx::Error, options: &PgConnectOptions, server: &str) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    match e {
        sqlx::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {server}: is PostgreSQL running and listening there?")
        }
        sqlx::Error::Io(io) if is_unknown_host(io) => format!(
            "unknown host {}: the name does not resolve ({io})",
            options.get_host()
        ),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => format!(
                "authentication failed for user {user:?} at {server}: check the URL's user and \
                 password"
            ),
            Some("28000") => format!(
                "PostgreSQL at {server} refused user {user:?}: {}",
                db.message()
            ),
            Some("3D000") => format!(
                "database {database:?} does not exist at {server}: create it (e.g. `createdb \
                 {database}`), or name another in the URL"
            ),
            Some(code) => format!(
                "PostgreSQL at {server} refused the connection ({code}): {}",
                db.message()
            ),
            None => format!(
                "PostgreSQL at {server} refused the connection: {}",
                db.message()
            ),
        },
        other => format!(
            "cannot connect to PostgreSQL at {server}: {}",
            crate::error_chain::causes(other)
        ),
    }
}

fn is_unknown_host(e: &io::Error) -> bool {
    let text = e.to_string();
    text.contains("lookup address") || text.contains("Name or service not known")
}

/// A pool that failed after the checks passed: the SQLite file that cannot be opened is said
/// plainly; anything else keeps its database error.
pub(super) fn explain(url: &str, e: DbErr) -> StoreError {
    let text = e.to_string();
    if url.starts_with("sqlite:") && text.contains("code: 14") {
        let file = SqliteConnectOptions::from_str(url)
            .map(|o| o.get_filename().display().to_string())
            .unwrap_or_default();
        return StoreError::Connect(format!(
            "cannot open the SQLite file {file}: is it writable by this user, and its directory \
             too?"
        ));
    }
    StoreError::Db(e)
}
