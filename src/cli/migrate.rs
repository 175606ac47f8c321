//! `draftd migrate`.

use anyhow::Context;

use crate::config::Config;
use crate::store;

/// `draftd migrate`: apply pending migrations and exit.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    store::migrate(&pool).await.context("applying migrations")?;
    println!(
        "migrations applied ({} known)",
        store::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count()
    );
    Ok(())
}
