//! The two SQL backends every HTTP test runs on: a database of its own per test (a SQLite
//! file, or a PostgreSQL database dropped after it), and the one macro that runs a test on both.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The one way a test runs on both backends: each named `async fn(TestApp)` once on SQLite and
/// once on PostgreSQL, as `<module>::sqlite::<name>` and `<module>::postgres::<name>`. With
/// `tweak = |s| ...;` first, every app of the module gets its settings adjusted; with
/// `backend:` first, each `async fn(Backend)` is given the backend and starts what it needs.
#[macro_export]
macro_rules! on_both_backends {
    (tweak = $tweak:expr; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@module sqlite, Sqlite, $tweak; $($name),*);
        $crate::on_both_backends!(@module postgres, Postgres, $tweak; $($name),*);
    };
    (@module $module:ident, $backend:ident, $tweak:expr; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::helpers::spawn_app_with($crate::helpers::Backend::$backend, $tweak).await;
                    super::$name(app).await
                }
            )*
        }
    };
    (backend: $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!(tweak = |_| {}; $($name),*);
    };
}

/// A database made for one test and dropped after it.
pub enum TestDb {
    /// Held so the directory (and the SQLite file in it) lives as long as the test.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl TestDb {
    pub async fn create(backend: Backend) -> (TestDb, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("creating a temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                (TestDb::Sqlite { _dir: dir }, url)
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("fq_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL must be reachable at {admin_url} for the tests \
                         (scripts/test starts it): {e}"
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("creating the test database");
                let url = database_url_for(&admin_url, &name);
                (TestDb::Postgres { admin_url, name }, url)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside the test's runtime: use a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for cleanup");
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Takes the database `name` away: refuses new connections and ends the open ones (the
/// pools' idle connections too), as a failover or a network cut would.
pub async fn cut(admin: &mut PgConnection, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut *admin)
    .await
    .unwrap();
}

pub async fn restore(admin: &mut PgConnection, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// The fan rows of `user` in the PostgreSQL database at `url`, and how many distinct handles
/// they hold: equal counts mean no fan was written twice.
pub async fn pg_fan_rows(url: &str, user: i64) -> (i64, i64) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT handle) FROM fans WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn database_url_for(admin_url: &str, name: &str) -> String {
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("a database URL has a path");
    format!("{base}/{name}")
}
